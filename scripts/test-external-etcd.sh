#!/usr/bin/env bash
# Runs the API integration suite against a separately started etcd
# process (Debian's etcd-server), on free loopback ports and a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ETCD=${ETCD:-$(command -v etcd || true)}
if [ -z "$ETCD" ]; then
  echo "test-external-etcd: etcd not found; run scripts/install-deps.sh" >&2
  exit 1
fi
dir=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
cport=$(port); pport=$(port)
ETCD_UNSUPPORTED_ARCH=${ETCD_UNSUPPORTED_ARCH:-} "$ETCD" --name capstan-test --data-dir "$dir/data" \
  --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "capstan-test=http://127.0.0.1:$pport" --log-level error >"$dir/etcd.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 50); do
  if (exec 3<>/dev/tcp/127.0.0.1/$cport) 2>/dev/null; then break; fi
  sleep 0.2
done
echo "external etcd on 127.0.0.1:$cport ($("$ETCD" --version | head -1))"
# One package at a time: tests share this etcd, and compaction is global.
rc=0
CAPSTAN_TEST_ETCD="http://127.0.0.1:$cport" ${GO:-go} test -p 1 -count=1 -timeout 15m ${CAPSTAN_EXTERNAL_ETCD_PKGS:-./test/integration/api/... ./test/integration/control/... ./test/integration/ha/... ./test/integration/scheduler/... ./control/storage/... ./control/registry/...} || rc=$?
exit $rc
