#!/usr/bin/env bash
# Prepares any Capstan node: Debian packages (runc, iproute2, iptables),
# kernel settings (forwarding, bpffs at /sys/fs/bpf, cgroup v2), and the
# binaries from the host's build: capstan with, beside it, what the agent
# runs (its own containerd v2 and runc shim, capstan-pause for the sandbox
# image). No system containerd: each agent starts and supervises its own.
# Settings: provision/env.sh. Run as root; safe to run again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

# runc: the agent's containerd runs containers with the runc on PATH;
# iptables: the agent removes iptables-mode rules when it runs in eBPF mode
# (and uses them in --mode iptables); kmod: the kernel loads overlay (the
# snapshotter's filesystem) through modprobe.
apt_install runc iproute2 iptables kmod util-linux ca-certificates
if on "$CAPSTAN_VM_APT"; then
  command -v runc >/dev/null || die "no runc on PATH after apt-get install runc: the agent's containerd needs it"
fi

# Forwarding for pods and NodePorts (the agent and CNI plugin turn it on
# too, but only once they run); kept across reboots. The kubelet sets
# vm.overcommit_memory, kernel.panic and kernel.panic_on_oops itself.
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

# capstan and its companions side by side in /usr/local/bin: the agent runs
# the containerd, containerd-shim-runc-v2 and capstan-pause it finds next to
# its own binary (make build leaves them so in bin/).
changed=0
for b in "${node_binaries[@]}"; do
  install_file 0755 "$CAPSTAN_VM_SRC/$b" "$bin_dir/$b"
done
# Their digests go into the units, so that a new build restarts them.
if [ "$changed" = 1 ] || [ ! -s "$etc_dir/binaries.sha256" ]; then
  (cd "$bin_dir" && sha256sum "${node_binaries[@]}") | write_file 0644 "$etc_dir/binaries.sha256"
fi
"$bin_dir/capstan" version >/dev/null || die "$bin_dir/capstan does not run here (built for another libc? build with CGO_ENABLED=0)"
"$bin_dir/containerd" --version >/dev/null || die "$bin_dir/containerd does not run here (built for another libc? build with CGO_ENABLED=0)"
log "node base ready: $("$bin_dir/capstan" version); $("$bin_dir/containerd" --version)"
