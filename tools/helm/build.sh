#!/bin/sh
# Build the upstream Helm CLI (helm.sh/helm/v4, the version in go.mod),
# unmodified and static, into OUT_DIR/helm: it renders and installs the chart
# in deploy/helm/capstan, and deploy/kubernetes/render.sh makes the plain
# manifest from that chart with it.
# The build holds /tmp/capstan-build.lock, so that it never runs beside
# another heavy build on the same machine; the time printed excludes the wait.
set -eu
if [ $# -ne 1 ]; then
	echo "usage: $0 OUT_DIR" >&2
	exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")"
v=$(go list -m -f '{{.Version}}' helm.sh/helm/v4)
# As upstream's Makefile: without these, `helm version` reports only "v4.3".
ld="-s -w -X helm.sh/helm/v4/internal/version.version=$v -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
export CGO_ENABLED=0
# shellcheck disable=SC2016 # expanded by the inner sh
LD=$ld OUT=$out flock /tmp/capstan-build.lock sh -c '
	start=$(date +%s)
	go build -trimpath -ldflags "$LD" -o "$OUT/helm" helm.sh/helm/v4/cmd/helm || exit
	echo "helm: built in $(($(date +%s) - start))s" >&2'
