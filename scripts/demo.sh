#!/usr/bin/env bash
# make demo: start a Capstan control plane on this machine and apply an
# example. (Nodes and the eBPF dataplane join in the [CLUSTER] milestone;
# until then the demo shows the Kubernetes API side.)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${CAPSTAN_DATA_DIR:-/var/lib/capstan}
PORT=${CAPSTAN_SECURE_PORT:-6443}
CAPSTAN=./bin/capstan
export CAPSTAN_DATA_DIR=$DATA_DIR

if [ "$(id -u)" -eq 0 ]; then ./scripts/install-deps.sh; fi
[ -x "$CAPSTAN" ] || make build
mkdir -p "$DATA_DIR"

pidfile=$DATA_DIR/server.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "capstan server already running (pid $(cat "$pidfile"))"
else
  echo "starting capstan server (data dir $DATA_DIR, port $PORT, log $DATA_DIR/server.log)"
  nohup "$CAPSTAN" server --data-dir "$DATA_DIR" --secure-port "$PORT" >"$DATA_DIR/server.log" 2>&1 &
  echo $! >"$pidfile"
fi

for i in $(seq 120); do
  if "$CAPSTAN" kubectl get --raw /readyz >/dev/null 2>&1 && "$CAPSTAN" kubectl get ns default >/dev/null 2>&1; then break; fi
  if [ "$i" -eq 120 ]; then echo "server did not become ready; see $DATA_DIR/server.log" >&2; exit 1; fi
  sleep 0.5
done

set -x
"$CAPSTAN" kubectl version
"$CAPSTAN" kubectl apply -f examples/hello.yaml
"$CAPSTAN" kubectl get deployments,services,configmaps -o wide
"$CAPSTAN" kubectl get service hello -o jsonpath='{.spec.clusterIP}{" "}{.spec.ports[0].nodePort}{"\n"}'
set +x
cat <<MSG

Capstan's API server is running (pid $(cat "$pidfile")); kubeconfig: $DATA_DIR/admin.kubeconfig
Try next:
  $CAPSTAN kubectl get all -A
  $CAPSTAN kubectl scale deployment hello --replicas=5
  $CAPSTAN kubectl get --raw /metrics | grep apiserver_request_total
Stop it with: kill \$(cat $pidfile)
MSG
