#!/bin/sh
# Build the upstream containerd v2 and its runc shim (the versions in go.mod),
# unmodified, into bin/ beside capstan: every Capstan node runs its own.
set -e
cd "$(dirname "$0")"
v=$(go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
ld="-s -w -X github.com/containerd/containerd/v2/version.Version=$v -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
# No btrfs, devmapper or zfs snapshotters: nodes use overlayfs, and these need C headers.
tags="no_btrfs no_devmapper no_zfs"
out=${1:-../../bin}
go build -tags "$tags" -ldflags "$ld" -o "$out/containerd" github.com/containerd/containerd/v2/cmd/containerd
CGO_ENABLED=0 go build -tags "$tags" -ldflags "$ld" -o "$out/containerd-shim-runc-v2" github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
