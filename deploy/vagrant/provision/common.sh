#!/usr/bin/env bash
# Prepares any Capstan node: Debian packages (containerd, runc, iproute2),
# kernel settings (forwarding, bpffs at /sys/fs/bpf, cgroup v2), a
# containerd for the agent, and the capstan binaries.
# Settings: provision/env.sh. Run as root; safe to run again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

# iptables: the agent removes iptables-mode rules when it runs in eBPF mode
# (and uses them in --mode iptables); kmod: containerd's unit loads overlay.
apt_install containerd runc iproute2 iptables kmod util-linux ca-certificates

# Forwarding for pods and NodePorts (the agent and CNI plugin turn it on
# too, but only once they run); kept across reboots.
write_file 0644 "$sysctl_dir/90-capstan.conf" <<'EOF'
# Capstan node: forward pod and NodePort traffic.
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
EOF

if on "$CAPSTAN_VM_KERNEL"; then
  # The dataplane attaches its tc programs with tcx links (Linux 6.6).
  kernel_at_least "$(uname -r)" 6 6 ||
    die "kernel $(uname -r): the dataplane needs Linux 6.6 or later (tcx); use debian/trixie64 or a backports kernel"
  sysctl -q -p "$sysctl_dir/90-capstan.conf"
  # The socket load balancer attaches to a cgroup v2 directory.
  [ -f /sys/fs/cgroup/cgroup.controllers ] ||
    die "cgroup v2 is not mounted at /sys/fs/cgroup (boot with systemd.unified_cgroup_hierarchy=1)"
  # Pinned maps and links outlive the agent on a bpf filesystem. systemd
  # mounts it on Debian; mount it if not.
  if ! mountpoint -q /sys/fs/bpf; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpffs /sys/fs/bpf -o mode=0700
    log "mounted bpffs at /sys/fs/bpf"
  fi
  [ -e /sys/kernel/btf/vmlinux ] || log "warning: the kernel has no BTF (/sys/kernel/btf/vmlinux)"
else
  log "skipped: sysctl, cgroup v2 check, bpffs mount"
fi

# containerd as Capstan's own script configures it (scripts/containerd.sh):
# no CRI plugin, since the agent is the kubelet and drives containerd
# through its Go client, one containerd namespace per node.
changed=0
write_file 0644 "$containerd_conf" <<'EOF'
# Written by Capstan's provisioning (deploy/vagrant/provision/common.sh).
version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
EOF
start_unit containerd
wait_unit containerd 30 "containerd did not make $CAPSTAN_VM_CONTAINERD_SOCKET" test -S "$CAPSTAN_VM_CONTAINERD_SOCKET"

# capstan and its log driver side by side: the agent runs the driver it
# finds next to its own binary (the containerd shim starts one per container).
changed=0
install_file 0755 "$CAPSTAN_VM_SRC/capstan" "$bin_dir/capstan"
install_file 0755 "$CAPSTAN_VM_SRC/capstan-logdriver" "$bin_dir/capstan-logdriver"
# The digest goes into the units, so that a new build restarts them.
if [ "$changed" = 1 ] || [ ! -s "$etc_dir/capstan.sha256" ]; then
  sum=$(sha256sum "$bin_dir/capstan")
  printf '%s\n' "${sum%% *}" | write_file 0644 "$etc_dir/capstan.sha256"
fi
"$bin_dir/capstan" version >/dev/null || die "$bin_dir/capstan does not run here (built for another libc? build with CGO_ENABLED=0)"
log "node base ready: $("$bin_dir/capstan" version)"
