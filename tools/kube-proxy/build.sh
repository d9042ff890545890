#!/bin/sh
# Build the upstream kube-proxy (k8s.io/kubernetes v1.37.2) into bin/kube-proxy.
set -e
cd "$(dirname "$0")"
exec go build -o ../../bin/kube-proxy .
