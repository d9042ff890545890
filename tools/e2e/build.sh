#!/bin/sh
# Build the upstream e2e suite of k8s.io/kubernetes v1.37.2 and the programs
# of its test images into OUT_DIR, all unmodified:
#   e2e.test                go test -c k8s.io/kubernetes/test/e2e
#   ginkgo                  the runner, at the version k8s.io/kubernetes requires
#   agnhost                 the e2e test image's program
#   nnp                     the nonewprivs image's program (prints its effective uid)
#   regression-issue-74839  the conntrack regression test's server
#   sample-apiserver, etcd  the aggregator test's API server and its store
# The image programs are static (CGO_ENABLED=0): test/images/e2eimages puts
# each in an image with nothing to link against.
# Each build holds /tmp/capstan-build.lock, so that it never runs beside
# another heavy build on the same machine; the time printed excludes the wait.
set -eu
if [ $# -ne 1 ]; then
	echo "usage: $0 OUT_DIR" >&2
	exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")"
v=v1.37.2
ver="-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"

# locked NAME COMMAND...: run COMMAND under the build lock and time it.
locked() {
	NAME=$1 flock /tmp/capstan-build.lock sh -c '
		shift; start=$(date +%s)
		"$@" || exit
		echo "e2e-tools: built $NAME in $(($(date +%s) - start))s" >&2' sh "$@"
}

locked e2e.test go test -c -ldflags "-s -w $ver" -o "$out/e2e.test" k8s.io/kubernetes/test/e2e
locked ginkgo go build -ldflags "-s -w" -o "$out/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
export CGO_ENABLED=0
locked agnhost go build -trimpath -ldflags "-s -w" -o "$out/agnhost" k8s.io/kubernetes/test/images/agnhost
locked nnp go build -trimpath -ldflags "-s -w" -o "$out/nnp" k8s.io/kubernetes/test/images/nonewprivs
locked regression-issue-74839 go build -trimpath -ldflags "-s -w" -o "$out/regression-issue-74839" k8s.io/kubernetes/test/images/regression-issue-74839
locked sample-apiserver go build -trimpath -ldflags "-s -w $ver" -o "$out/sample-apiserver" k8s.io/sample-apiserver
locked etcd go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
