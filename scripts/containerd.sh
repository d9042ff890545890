#!/usr/bin/env bash
# Starts a containerd that belongs to Capstan: its own config, root, state
# and socket, so it never touches (or depends on) a system containerd.
# Usage: scripts/containerd.sh start|stop|status
# The socket is $CAPSTAN_CONTAINERD_SOCKET (default below).
set -euo pipefail

base=${CAPSTAN_CONTAINERD_DIR:-/run/capstan/containerd}
root=${CAPSTAN_CONTAINERD_ROOT:-/var/lib/capstan/containerd}
sock=${CAPSTAN_CONTAINERD_SOCKET:-$base/containerd.sock}
conf=$base/config.toml
pidf=$base/containerd.pid
log=$base/containerd.log

running() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
answers() { [ -S "$sock" ] && ctr --address "$sock" version >/dev/null 2>&1; }

case "${1:-start}" in
start)
  # A socket left by a killed containerd (its pid file too) refuses
  # connections: only one that answers counts as started.
  if running; then
    # Ours and alive: give a busy or starting one time to answer before
    # replacing it.
    for _ in $(seq 1 50); do answers && exit 0; sleep 0.1; done
    kill "$(cat "$pidf")" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$sock" "$sock.ttrpc"
  command -v containerd >/dev/null || { echo "containerd.sh: containerd is not installed (scripts/install-deps.sh)" >&2; exit 1; }
  mkdir -p "$base" "$root"
  # The CRI plugin is off: the Capstan agent is the kubelet and drives
  # containerd through its Go client, one containerd namespace per node.
  cat >"$conf" <<CONF
version = 2
root = "$root"
state = "$base/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.runtime.v1.linux"]
  shim_debug = false
CONF
  nohup containerd --config "$conf" >"$log" 2>&1 &
  echo $! >"$pidf"
  for _ in $(seq 1 100); do
    if answers; then exit 0; fi
    running || { echo "containerd.sh: containerd exited; log:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "containerd.sh: containerd did not answer on $sock; log:" >&2; tail -20 "$log" >&2; exit 1
  ;;
stop)
  if running; then kill "$(cat "$pidf")"; fi
  rm -f "$pidf"
  ;;
status)
  if running && answers; then echo "containerd running, socket $sock"; else echo "containerd not running (or not answering on $sock)"; exit 1; fi
  ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
