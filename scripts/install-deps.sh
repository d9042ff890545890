#!/usr/bin/env bash
# Installs the Debian packages Capstan's build, tests and demo need.
# Safe to run repeatedly; it only installs what is missing.
set -euo pipefail

packages=(
  clang llvm libbpf-dev bpftool linux-libc-dev  # BPF programs (make generate)
  iproute2 iptables util-linux curl  # netns, veth; nsenter runs node agents in their netns; curl for make demo
  runc busybox-static  # the OCI runtime under each node's containerd (built by make build), the test images
  vagrant shellcheck openssl  # make vagrant-check: vagrant validate, script lint, the VMs' CA (deploy/vagrant)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { echo "install-deps: Go is required (https://go.dev/dl)" >&2; exit 1; }
