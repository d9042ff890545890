#!/usr/bin/env bash
# make demo: start a Capstan control plane and one node on this machine and
# run an example on it. The node is a network namespace (capstan-demo-n1)
# joined to the server by a /30 link; its pods live only inside it.
# (More nodes, `capstan up` and the eBPF dataplane come with [CLUSTER].)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${CAPSTAN_DATA_DIR:-/var/lib/capstan}
PORT=${CAPSTAN_SECURE_PORT:-6443}
CAPSTAN=./bin/capstan
export CAPSTAN_DATA_DIR=$DATA_DIR

if [ "$(id -u)" -eq 0 ]; then ./scripts/install-deps.sh; fi
[ -x "$CAPSTAN" ] || make build
mkdir -p "$DATA_DIR"

# The harness link: the server listens on its root side; the node's eth0
# is the other end. The root namespace gets no route to pod CIDRs.
NODE=n1
NETNS=capstan-demo-$NODE
HOST_IP=172.30.255.1
NODE_IP=172.30.255.2
if ! ip netns list | grep -qw "$NETNS"; then
  ip netns add "$NETNS"
  ip link add capdemo-$NODE type veth peer name eth0 netns "$NETNS"
  ip addr add $HOST_IP/30 dev capdemo-$NODE
  ip link set capdemo-$NODE up
  ip -n "$NETNS" addr add $NODE_IP/30 dev eth0
  ip -n "$NETNS" link set eth0 up
  ip -n "$NETNS" link set lo up
fi
./scripts/containerd.sh start
[ -f bin/images/capstan-test-images.tar ] || make images

pidfile=$DATA_DIR/server.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "capstan server already running (pid $(cat "$pidfile"))"
else
  echo "starting capstan server (data dir $DATA_DIR, port $PORT, log $DATA_DIR/server.log)"
  nohup "$CAPSTAN" server --data-dir "$DATA_DIR" --secure-port "$PORT" --advertise-address $HOST_IP >"$DATA_DIR/server.log" 2>&1 &
  echo $! >"$pidfile"
fi

for i in $(seq 120); do
  if "$CAPSTAN" kubectl get --raw /readyz >/dev/null 2>&1 && "$CAPSTAN" kubectl get ns default >/dev/null 2>&1; then break; fi
  if [ "$i" -eq 120 ]; then echo "server did not become ready; see $DATA_DIR/server.log" >&2; exit 1; fi
  sleep 0.5
done

agentpid=$DATA_DIR/agent-$NODE.pid
if [ -f "$agentpid" ] && kill -0 "$(cat "$agentpid")" 2>/dev/null; then
  echo "capstan agent $NODE already running (pid $(cat "$agentpid"))"
else
  echo "starting capstan agent $NODE in netns $NETNS (log $DATA_DIR/agent-$NODE.log)"
  nohup nsenter --net=/run/netns/$NETNS "$CAPSTAN" agent --server https://$HOST_IP:$PORT \
    --token "$(cat "$DATA_DIR/join-token")" --ca-file "$DATA_DIR/pki/ca.crt" \
    --node-name $NODE --node-ip $NODE_IP --data-dir "$DATA_DIR" \
    --cni-conf-dir "$DATA_DIR/nodes/$NODE/cni" \
    --import-images bin/images/capstan-test-images.tar >"$DATA_DIR/agent-$NODE.log" 2>&1 &
  echo $! >"$agentpid"
fi
for i in $(seq 120); do
  "$CAPSTAN" kubectl get node $NODE >/dev/null 2>&1 && break
  if [ "$i" -eq 120 ]; then echo "node $NODE did not register; see $DATA_DIR/agent-$NODE.log" >&2; exit 1; fi
  sleep 0.5
done
"$CAPSTAN" kubectl wait --for=condition=Ready node/$NODE --timeout=120s

set -x
"$CAPSTAN" kubectl version
"$CAPSTAN" kubectl apply -f examples/hello.yaml
"$CAPSTAN" kubectl rollout status deployment/hello --timeout=120s
"$CAPSTAN" kubectl get nodes,deployments,pods,services -o wide
pod=$("$CAPSTAN" kubectl get pods -l app=hello -o jsonpath='{.items[0].metadata.name}')
"$CAPSTAN" kubectl exec "$pod" -- wget -qO- http://127.0.0.1:8080/hostname; echo
"$CAPSTAN" kubectl logs "$pod" --tail=3
set +x
cip=$("$CAPSTAN" kubectl get service hello -o jsonpath='{.spec.clusterIP}')
nport=$("$CAPSTAN" kubectl get service hello -o jsonpath='{.spec.ports[0].nodePort}')
echo
echo "== ClusterIP $cip:80 from pod $pod: eBPF socket load balancing picks a backend per connection"
for i in $(seq 6); do
  "$CAPSTAN" kubectl exec "$pod" -- /capstan-echo connect --protocol http "$cip:80"
done
echo
echo "== NodePort $NODE_IP:$nport from outside the cluster (this machine's namespace)"
for i in $(seq 4); do
  curl -s -m 3 "http://$NODE_IP:$nport/hostname"; echo
done
echo
echo "== the node's service map (capstan dp services)"
"$CAPSTAN" dp services --pin-dir /sys/fs/bpf/capstan/$NODE
cat <<MSG

Capstan's API server (pid $(cat "$pidfile")) and node $NODE (pid $(cat "$agentpid"), netns $NETNS)
are running; kubeconfig: $DATA_DIR/admin.kubeconfig
Try next:
  $CAPSTAN kubectl get all -A
  $CAPSTAN dp services --pin-dir /sys/fs/bpf/capstan/$NODE      (also: backends, ct, routes, stats)
  $CAPSTAN kubectl scale deployment hello --replicas=5
  $CAPSTAN kubectl get --raw /metrics | grep apiserver_request_total
  $CAPSTAN kubectl logs -f deployment/hello
  $CAPSTAN kubectl port-forward deployment/hello 8080:8080
Stop: kill \$(cat $agentpid) \$(cat $pidfile)   (pods keep running until their node's agent deletes them)
MSG
