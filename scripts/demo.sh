#!/usr/bin/env bash
# make demo: on a fresh machine, install what is missing, build, start a
# local 3-node cluster (`capstan up`: each node a network namespace) and
# show a Service load-balanced by the nodes' eBPF dataplanes. The cluster
# stays up; `bin/capstan down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
CAPSTAN=./bin/capstan
NODES=${CAPSTAN_DEMO_NODES:-3}
ROUTING=${CAPSTAN_DEMO_ROUTING:-native}
DATA_DIR=${CAPSTAN_DATA_DIR:-/var/lib/capstan}
export CAPSTAN_DATA_DIR=$DATA_DIR

if [ "$(id -u)" -ne 0 ]; then echo "make demo needs root (network namespaces, BPF, cgroups)" >&2; exit 1; fi
./scripts/install-deps.sh
make -s build
[ -f bin/images/capstan-test-images.tar ] || make -s images

"$CAPSTAN" up --nodes "$NODES" --routing "$ROUTING" --data-dir "$DATA_DIR" --images bin/images/capstan-test-images.tar

echo "waiting for $NODES nodes to be Ready"
for i in $(seq 180); do
  ready=$("$CAPSTAN" kubectl get nodes --no-headers 2>/dev/null | grep -cw Ready || true)
  [ "$ready" -ge "$NODES" ] && break
  if [ "$i" -eq 180 ]; then echo "nodes not Ready; see $DATA_DIR/cluster/logs/" >&2; exit 1; fi
  sleep 1
done

set -x
"$CAPSTAN" kubectl apply -f examples/demo/
"$CAPSTAN" kubectl rollout status deployment/echo --timeout=180s
"$CAPSTAN" kubectl get nodes,pods,services -o wide
set +x
pod=$("$CAPSTAN" kubectl get pods -l app=echo -o jsonpath='{.items[0].metadata.name}')
cip=$("$CAPSTAN" kubectl get service echo -o jsonpath='{.spec.clusterIP}')
hip=$("$CAPSTAN" kubectl get service echo-source-hash -o jsonpath='{.spec.clusterIP}')
nport=$("$CAPSTAN" kubectl get service echo-nodeport -o jsonpath='{.spec.ports[0].nodePort}')

echo
echo "== ClusterIP $cip:80 from pod $pod: the eBPF socket load balancer picks a backend per connection"
for i in $(seq 6); do
  "$CAPSTAN" kubectl exec "$pod" -- /capstan-echo connect --protocol http "$cip:80"
done
echo
echo "== source-hash (Maglev) Service $hip:80 from the same pod: one client, always the same backend"
for i in $(seq 6); do
  "$CAPSTAN" kubectl exec "$pod" -- /capstan-echo connect --protocol http "$hip:80"
done
echo
echo "== NodePort $nport from the 'outside' namespace, to every node"
for ip in $("$CAPSTAN" kubectl get nodes -o jsonpath='{range .items[*]}{.status.addresses[?(@.type=="InternalIP")].address}{" "}{end}'); do
  printf '%s -> ' "$ip"; ip netns exec capstan-outside curl -s -m 3 "http://$ip:$nport/hostname"; echo
done
echo
echo "== node-1's service map (capstan dp services)"
"$CAPSTAN" dp services --node-name node-1

cat <<MSG

The cluster keeps running. Try next:
  $CAPSTAN kubectl get pods -o wide
  $CAPSTAN dp services --node-name node-1      (also: backends, ct, routes, stats)
  $CAPSTAN kubectl annotate service echo lb.capstan.io/algorithm=round-robin
  $CAPSTAN kubectl logs -f deployment/echo
Remove everything: $CAPSTAN down
MSG
