#!/bin/sh
# Build the upstream portmap CNI plugin (containernetworking/plugins, the
# version in go.mod), unmodified and static, into bin/ beside capstan-cni:
# every node chains it after capstan-cni for pods' hostPorts.
set -e
cd "$(dirname "$0")"
out=${1:-../../bin}
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/portmap" github.com/containernetworking/plugins/plugins/meta/portmap
