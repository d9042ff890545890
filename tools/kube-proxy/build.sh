#!/bin/sh
# Build the upstream kube-proxy (k8s.io/kubernetes v1.37.2) into bin/kube-proxy.
set -e
cd "$(dirname "$0")"
v=v1.37.2
exec go build -ldflags "-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean" -o ../../bin/kube-proxy .
