#!/usr/bin/env bash
# Waits until a cluster has at least COUNT Ready nodes, then lists them.
# Usage: wait-nodes.sh KUBECONFIG COUNT [TIMEOUT_SECONDS]   (default 600)
# Uses $CAPSTAN (default: the repository's bin/capstan) for its kubectl.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 KUBECONFIG COUNT [TIMEOUT_SECONDS]" >&2; exit 2; }
kubeconfig=$1 count=$2 timeout=${3:-600}
[[ $count =~ ^[0-9]+$ && $timeout =~ ^[0-9]+$ ]] || { echo "wait-nodes.sh: COUNT and TIMEOUT are numbers" >&2; exit 2; }
capstan=${CAPSTAN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/bin/capstan}
kubectl() { "$capstan" kubectl --kubeconfig "$kubeconfig" "$@"; }

# One line a node: its name and the status of its Ready condition.
jsonpath='{range .items[*]}{.metadata.name}{" "}{range .status.conditions[?(@.type=="Ready")]}{.status}{end}{"\n"}{end}'
deadline=$((SECONDS + timeout))
while :; do
  if out=$(kubectl get nodes -o jsonpath="$jsonpath" 2>&1); then
    ready=$(awk '$2 == "True"' <<<"$out" | wc -l)
    [ "$ready" -ge "$count" ] && break
    status="$ready of $count nodes Ready"
  else
    status="API server not answering: ${out##*$'\n'}"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "wait-nodes.sh: after ${timeout}s, $status" >&2
    kubectl get nodes -o wide >&2 || true
    exit 1
  fi
  sleep 2
done
kubectl get nodes -o wide
