# shellcheck shell=bash
# shellcheck disable=SC2034 # the paths are for the scripts that source this
# Settings and helpers shared by the provisioning scripts (sourced, not run).
#
# Every setting is an environment variable with a default that suits a
# Vagrant VM. The variables are CAPSTAN_VM_* rather than CAPSTAN_*: capstan
# itself reads CAPSTAN_<FLAG> variables, and these must never reach it.
#
#   CAPSTAN_VM_PROVISION 1: this machine is a node to provision (the Vagrantfile
#                        sets it); without it and without a root, the scripts
#                        refuse to change the machine they run on
#   CAPSTAN_VM_ROOT      prefix of every path the scripts write *and* name in
#                        what they write (configs, units): "" on a VM; a temp
#                        dir to render a node without touching the machine
#   CAPSTAN_VM_SYSTEMD   1: reload systemd and (re)start the units; 0: only write them
#   CAPSTAN_VM_APT       1: install the node's Debian packages; 0: skip
#   CAPSTAN_VM_KERNEL    1: apply sysctls, mount bpffs, check cgroup v2; 0: skip
#                        (these three default to 1 without a root, 0 with one)
#   CAPSTAN_VM_SRC       where the built binaries are (bin/ of the repository)
#   CAPSTAN_VM_SECRETS   join-token, ca.crt, ca.key made on the host by secrets.sh
#   CAPSTAN_VM_SERVER_IP / CAPSTAN_VM_SERVER_PORT   the API server
#   CAPSTAN_VM_NODE_NAME / CAPSTAN_VM_NODE_IP       this node
#   CAPSTAN_VM_DEVICE    node device for NodePort programs (default: the one holding NODE_IP)
#   CAPSTAN_VM_ROUTING, CAPSTAN_VM_MODE, CAPSTAN_VM_CLUSTER_CIDR,
#   CAPSTAN_VM_SERVICE_CIDR, CAPSTAN_VM_LOG_LEVEL
#   CAPSTAN_VM_SOCKET_LB_CGROUP  cgroup v2 directory of the socket load balancer,
#                        relative to the v2 hierarchy (default /: the VM's own
#                        processes reach ClusterIPs too, as with kube-proxy;
#                        empty: pods only)

: "${CAPSTAN_VM_ROOT:=}"
# With a root, nothing outside it is touched unless asked for.
if [ -n "$CAPSTAN_VM_ROOT" ]; then
  : "${CAPSTAN_VM_SYSTEMD:=0}" "${CAPSTAN_VM_APT:=0}" "${CAPSTAN_VM_KERNEL:=0}"
else
  : "${CAPSTAN_VM_SYSTEMD:=1}" "${CAPSTAN_VM_APT:=1}" "${CAPSTAN_VM_KERNEL:=1}"
fi
: "${CAPSTAN_VM_SRC:=/capstan/bin}"
: "${CAPSTAN_VM_SECRETS:=/capstan/vagrant/.capstan}"
: "${CAPSTAN_VM_SERVER_IP:=192.168.56.10}"
: "${CAPSTAN_VM_SERVER_PORT:=6443}"
: "${CAPSTAN_VM_NODE_NAME:=$(hostname)}"
: "${CAPSTAN_VM_NODE_IP:=}"
: "${CAPSTAN_VM_DEVICE:=}"
: "${CAPSTAN_VM_ROUTING:=native}"
: "${CAPSTAN_VM_MODE:=ebpf}"
: "${CAPSTAN_VM_CLUSTER_CIDR:=10.244.0.0/16}"
: "${CAPSTAN_VM_SERVICE_CIDR:=10.96.0.0/16}"
: "${CAPSTAN_VM_LOG_LEVEL:=info}"
# "=" not ":=": set and empty means the agent's default, its pods' subtree.
: "${CAPSTAN_VM_SOCKET_LB_CGROUP=/}"

# Paths on the node, all under CAPSTAN_VM_ROOT.
vm_root=${CAPSTAN_VM_ROOT%/}
bin_dir=$vm_root/usr/local/bin
cni_bin_dir=$vm_root/opt/cni/bin
cni_conf_dir=$vm_root/etc/cni/net.d
etc_dir=$vm_root/etc/capstan
unit_dir=$vm_root/etc/systemd/system
sysctl_dir=$vm_root/etc/sysctl.d
data_dir=$vm_root/var/lib/capstan
run_dir=$vm_root/run/capstan
images_dir=$data_dir/images

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "$*"; exit 1; }

on() { [ "$1" = 1 ] || [ "$1" = true ] || [ "$1" = yes ]; }

if [ -z "$vm_root" ] && ! on "${CAPSTAN_VM_PROVISION:-0}"; then
  die "refusing to change this machine: set CAPSTAN_VM_PROVISION=1 on a node to provision, or CAPSTAN_VM_ROOT=DIR to render into DIR"
fi

# is_ipv4 ADDR: a dotted quad with every part 0-255.
is_ipv4() {
  local IFS=. part
  # shellcheck disable=SC2206 # splitting on dots is the point
  local parts=($1)
  [ "${#parts[@]}" -eq 4 ] || return 1
  for part in "${parts[@]}"; do
    [[ $part =~ ^[0-9]{1,3}$ ]] && [ "$part" -le 255 ] || return 1
  done
}

# is_cidr PREFIX: an IPv4 prefix a.b.c.d/n.
is_cidr() {
  [[ $1 == */* ]] && is_ipv4 "${1%/*}" && [[ ${1#*/} =~ ^[0-9]{1,2}$ ]] && [ "${1#*/}" -le 32 ]
}

# kernel_at_least RELEASE MAJOR MINOR: RELEASE (as uname -r prints it) is
# MAJOR.MINOR or later.
kernel_at_least() {
  local major minor rest
  IFS=. read -r major minor rest <<<"$1"
  minor=${minor%%[!0-9]*}
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  [ "$major" -gt "$2" ] || { [ "$major" -eq "$2" ] && [ "$minor" -ge "$3" ]; }
}

# is_bootstrap_token FILE: FILE holds a Kubernetes bootstrap token
# ("abcdef.0123456789abcdef"), the only join token capstan accepts.
is_bootstrap_token() {
  [[ $(tr -d '[:space:]' <"$1") =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]]
}

# A node name must be a DNS-1123 subdomain: it names a Node object, and
# the agent's directories and cgroup.
is_node_name() {
  [ "${#1}" -le 63 ] && [[ $1 =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]]
}

# install_file MODE SRC DST: copy with mode, writing a temp file and renaming
# it so a running binary is replaced, not overwritten in place; a DST with
# the same bytes is left alone. Sets changed=1 when it copied.
install_file() {
  local mode=$1 src=$2 dst=$3
  [ -f "$src" ] || die "missing $src (run make build images on the host)"
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    chmod "$mode" "$dst"
    return 0
  fi
  mkdir -p "$(dirname "$dst")"
  cp "$src" "$dst.tmp.$$"
  chmod "$mode" "$dst.tmp.$$"
  mv -f "$dst.tmp.$$" "$dst"
  changed=1
  log "installed $dst"
}

# write_file MODE DST: stdin to DST (temp file, then rename), leaving DST
# alone when it already holds the same bytes; sets changed=1 when it wrote.
changed=0
write_file() {
  local mode=$1 dst=$2 tmp
  mkdir -p "$(dirname "$dst")"
  tmp=$dst.tmp.$$
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [ -f "$dst" ] && cmp -s "$tmp" "$dst"; then
    rm -f "$tmp"
    return 0
  fi
  mv -f "$tmp" "$dst"
  changed=1
  log "wrote $dst"
}

# Binaries installed beside capstan (common.sh): the agent runs its own
# containerd with the runc shim from there, and makes the pod sandbox image
# from capstan-pause.
node_binaries=(capstan capstan-pause containerd containerd-shim-runc-v2)

# binary_digests NAME...: a comment line per binary with the sha256 of the
# installed copy, as common.sh recorded it.
binary_digests() {
  local name sum
  [ -s "$etc_dir/binaries.sha256" ] || die "no $etc_dir/binaries.sha256: run common.sh first"
  for name in "$@"; do
    sum=$(awk -v n="$name" '$2 == n { print $1 }' "$etc_dir/binaries.sha256")
    [ -n "$sum" ] || die "$etc_dir/binaries.sha256 has no $name: run common.sh again"
    printf '# %s sha256 %s\n' "$name" "$sum"
  done
}

# write_unit NAME DESCRIPTION WANTS AFTER BINARIES ARGS [LINE...]: the
# systemd unit NAME.service running `capstan ARGS`, with extra [Service]
# LINEs. BINARIES (names in bin_dir) are what the unit runs: their digests
# go into it, so that a new build changes the unit and restarts it.
write_unit() {
  local name=$1 desc=$2 wants=$3 after=$4 binaries=$5 args=$6 extra='' digests
  shift 6
  [ $# -eq 0 ] || extra=$(printf '%s\n' "$@")  # (the last newline is dropped)
  # shellcheck disable=SC2086 # a list of names
  digests=$(binary_digests $binaries) || exit 1
  write_file 0644 "$unit_dir/$name.service" <<EOF
[Unit]
Description=$desc
Documentation=https://github.com/capstan-net/capstan
Wants=$wants
After=$after

[Service]
# The binaries' digests, so that a new build changes the unit and restarts it.
$digests
ExecStart=$bin_dir/capstan $args
Restart=always
RestartSec=5
LimitNOFILE=1048576
TimeoutStopSec=30${extra:+
$extra}

[Install]
WantedBy=multi-user.target
EOF
}

# yaml_str VALUE: VALUE as a double-quoted YAML scalar.
yaml_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

# device_of IP: the interface that holds IP (as ip -o addr prints it).
device_of() {
  ip -o -4 addr show 2>/dev/null | awk -v ip="$1" '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }'
}

# systemctl_do ARGS...: systemctl, unless CAPSTAN_VM_SYSTEMD is off.
systemctl_do() {
  if on "$CAPSTAN_VM_SYSTEMD"; then
    systemctl "$@"
  else
    log "skipped: systemctl $*"
  fi
}

# start_unit UNIT: enable UNIT and start it, or restart it when this run
# changed one of its files (changed=1).
start_unit() {
  systemctl_do daemon-reload
  systemctl_do enable "$1"
  if [ "$changed" = 1 ]; then
    systemctl_do restart "$1"
  else
    systemctl_do start "$1"
  fi
}

# wait_unit UNIT SECONDS WHAT CMD...: with systemd on, wait until CMD
# succeeds; after SECONDS, show UNIT's journal and fail, saying WHAT.
wait_unit() {
  local unit=$1 secs=$2 what=$3 i
  shift 3
  on "$CAPSTAN_VM_SYSTEMD" || return 0
  for ((i = 0; i < secs; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  journalctl -u "$unit" -n 50 --no-pager >&2 || true
  die "$what in ${secs}s"
}

# apt_install PACKAGE...: install what is missing, unless CAPSTAN_VM_APT is off.
apt_install() {
  local p missing=()
  on "$CAPSTAN_VM_APT" || { log "skipped: apt-get install $*"; return 0; }
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
