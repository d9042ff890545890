#!/bin/sh
# Build the upstream CoreDNS (the version in go.mod), unmodified and static,
# into bin/ beside capstan: the agent makes the cluster DNS image from it.
set -e
cd "$(dirname "$0")"
out=${1:-../../bin}
# Static: the image holds this one file and nothing to link against.
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/coredns" github.com/coredns/coredns
