#!/usr/bin/env bash
# CI check of deploy/vagrant without VMs (`make vagrant-check`):
#   1. vagrant validate (provider blocks ignored: no provider is installed
#      in CI), with the default settings and with others, and a bad setting
#      must be refused;
#   2. bash -n and, if installed, shellcheck on every script;
#   3. the provisioning scripts render a server node and an agent node into a
#      throwaway root (no apt, no systemctl, no kernel changes): the files,
#      their modes, config keys that are real flags of `capstan server` and
#      `capstan agent`, systemd units that name the rendered binaries,
#      nothing rewritten on a second run, and bad settings refused;
#   4. as root: the rendered server and agent run as the units would, each
#      in a network namespace of its own joined by a veth pair (the VMs'
#      addresses), with secrets.sh's CA and token: the agent starts its own
#      containerd, finds its device by address, joins (kubelet TLS
#      bootstrapping), its node turns Ready with its podCIDR and the CNI
#      configuration the agent wrote, and a pod runs on it. Then everything
#      is torn down as `capstan down` does it, and checked gone. Skipped
#      (with the reason) when not root, or without netns, cgroup v2 or runc,
#      except under CI=true, where that is a failure.
# Needs bin/capstan, capstan-cni, capstan-pause, containerd and
# containerd-shim-runc-v2 (make build).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${CAPSTAN_VAGRANT_BIN:-$repo/bin}
capstan=$bin/capstan
start=$SECONDS

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok    $*"; }
bad() { fail=$((fail + 1)); echo "FAIL  $*"; }
skip() { echo "SKIP  $*"; }
# check DESCRIPTION CMD...: one line of the report.
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
# logged LOG DESCRIPTION CMD...: check, with the command's output in LOG,
# shown only when it fails.
logged() {
  local logf=$1 what=$2
  shift 2
  if "$@" >"$logf" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/      /' "$logf" | tail -40; return 1; fi
}
# refuses DESCRIPTION CMD...: the command must fail.
refuses() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then bad "$what"; else ok "$what"; fi
}

# What a node gets from bin/ (the Vagrantfile's NODE_FILES).
node_files=(capstan capstan-cni capstan-pause containerd containerd-shim-runc-v2)
for b in "${node_files[@]}"; do
  [ -x "$bin/$b" ] || { echo "check.sh: no $bin/$b (make build)" >&2; exit 1; }
done
# Short: the agent's containerd socket (<root>/run/capstan/<node>/containerd/
# containerd.sock.ttrpc) must fit in a unix socket path's 107 bytes.
tmp=$(mktemp -d /tmp/capstan-vgchk.XXXXXX)
cleanups=()
# Teardown steps, run last first.
run_cleanups() {
  local i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
  cleanups=()
}
# unmount_under DIR: every mount at or below DIR, deepest first (pod
# volumes, container root filesystems, pod network namespaces, the
# kubelet's own bind mount of its root dir).
unmount_under() {
  local p
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print length($5), $5 }' /proc/self/mountinfo |
    sort -rn | cut -d' ' -f2- | while IFS= read -r p; do umount -l "$p" 2>/dev/null || true; done
}
# Nothing is removed across a mount left behind (--one-file-system).
trap 'run_cleanups; unmount_under "$tmp"; rm -rf --one-file-system "$tmp"' EXIT

# ---- 1. vagrant validate
echo "== vagrant validate (at $((SECONDS - start))s)"
if command -v vagrant >/dev/null; then
  vopts=()
  (cd "$tmp" && vagrant validate --help 2>&1) | grep -q -- --ignore-provider && vopts+=(--ignore-provider)
  validate() (
    cd "$here" && VAGRANT_DOTFILE_PATH=$tmp/vagrant-dot CAPSTAN_VAGRANT_BIN=$bin vagrant validate "${vopts[@]}"
  )
  logged "$tmp/validate.log" "vagrant validate ($(cd "$tmp" && vagrant --version))" validate || true
  check "vagrant validate: 3 agents, control-plane-only server, vxlan, iptables" \
    env CAPSTAN_VAGRANT_AGENTS=3 CAPSTAN_VAGRANT_SERVER_AGENT=0 CAPSTAN_VAGRANT_ROUTING=vxlan \
    CAPSTAN_VAGRANT_MODE=iptables CAPSTAN_VAGRANT_SUBNET=10.11.12 bash -c "$(declare -f validate); $(declare -p vopts tmp here bin); validate >/dev/null 2>&1"
  for bad_setting in CAPSTAN_VAGRANT_AGENTS=0 CAPSTAN_VAGRANT_SUBNET=192.168.300; do
    refuses "vagrant validate refuses $bad_setting" \
      env "$bad_setting" bash -c "$(declare -f validate); $(declare -p vopts tmp here bin); validate"
  done
else
  skip "vagrant validate: vagrant is not installed (scripts/install-deps.sh installs it)"
  [ "${CI:-}" = true ] && bad "vagrant is required under CI=true"
fi
# The VMs get from bin/ what the scripts install, and nothing else.
vagrant_files() {
  local files
  files=$(sed -n 's/^NODE_FILES = %w\[\(.*\)\]\.freeze$/\1/p' "$here/Vagrantfile")
  [ "$files" = "${node_files[*]}" ] || { echo "      Vagrantfile NODE_FILES: '$files', want '${node_files[*]}'"; return 1; }
}
check "the Vagrantfile copies capstan, capstan-cni, capstan-pause, containerd and its runc shim" vagrant_files

# ---- 2. syntax and lint
echo "== scripts (at $((SECONDS - start))s)"
scripts=("$here"/*.sh "$here"/provision/*.sh)
for s in "${scripts[@]}"; do
  check "bash -n ${s#"$repo"/}" bash -n "$s"
done
if command -v shellcheck >/dev/null; then
  check "shellcheck ($(shellcheck --version | awk '/^version:/ {print $2}'))" \
    shellcheck -x -P "$here/provision" "${scripts[@]}"
else
  skip "shellcheck is not installed"
fi

# ---- 3. render a server node and an agent node into a throwaway root
echo "== provisioning rendered into a temp root (at $((SECONDS - start))s)"
"$here/secrets.sh" "$tmp/secrets" 2>/dev/null
check "secrets.sh: bootstrap join token, CA certificate and PKCS#8 key" \
  bash -c "grep -qxE '[a-z0-9]{6}\\.[a-z0-9]{16}' '$tmp/secrets/join-token' && grep -q 'BEGIN CERTIFICATE' '$tmp/secrets/ca.crt' && grep -q 'BEGIN PRIVATE KEY' '$tmp/secrets/ca.key'"
cp -r "$tmp/secrets" "$tmp/secrets.orig"
"$here/secrets.sh" "$tmp/secrets" 2>/dev/null
check "secrets.sh keeps what is there" diff -r "$tmp/secrets.orig" "$tmp/secrets"
# An older secrets.sh's token (48 hex digits) is no bootstrap token.
mkdir -p "$tmp/old-secrets"
openssl rand -hex 24 >"$tmp/old-secrets/join-token"
refuses "secrets.sh refuses a join token of an older secrets.sh" "$here/secrets.sh" "$tmp/old-secrets"
cp "$tmp/secrets/ca.crt" "$tmp/secrets/ca.key" "$tmp/old-secrets/"

# Only the binaries a node needs, not the rest of bin/.
mkdir -p "$tmp/src"
for b in "${node_files[@]}"; do ln -s "$bin/$b" "$tmp/src/$b"; done

# provision ROOT SCRIPT [VAR=VALUE...]: one script, nothing outside ROOT.
provision() {
  local root=$1 script=$2
  shift 2
  env -u CAPSTAN_VM_PROVISION CAPSTAN_VM_ROOT="$root" \
    CAPSTAN_VM_SRC="$tmp/src" CAPSTAN_VM_SECRETS="$tmp/secrets" \
    CAPSTAN_VM_SERVER_IP=192.168.56.10 CAPSTAN_VM_NODE_IP=192.168.56.11 \
    CAPSTAN_VM_NODE_NAME=capstan-agent-1 CAPSTAN_VM_DEVICE=eth1 "$@" \
    bash "$here/provision/$script"
}
r=$tmp/root
for s in common.sh server.sh agent.sh; do
  logged "$tmp/render-$s.log" "provision/$s renders" provision "$r" "$s" || true
done

mode() { stat -c %a "$1"; }
check "binaries installed: capstan, capstan-pause, containerd and its runc shim side by side, the CNI plugin in /opt/cni/bin" \
  bash -c "for b in capstan capstan-pause containerd containerd-shim-runc-v2; do cmp -s '$bin/'\$b '$r/usr/local/bin/'\$b && [ -x '$r/usr/local/bin/'\$b ] || exit 1; done
    cmp -s '$bin/capstan-cni' '$r/opt/cni/bin/capstan-cni' && [ -x '$r/opt/cni/bin/capstan-cni' ]"
check "common.sh: runc from Debian, no containerd package and no containerd config" \
  bash -c "grep -qE 'skipped: apt-get install .*\\brunc\\b' '$tmp/render-common.sh.log' &&
    ! grep -qE 'skipped: apt-get install .*\\bcontainerd\\b' '$tmp/render-common.sh.log' && [ ! -e '$r/etc/containerd' ]"
check "server data dir seeded with the host's CA and token (keys 0600)" \
  bash -c "cmp -s '$tmp/secrets/ca.crt' '$r/var/lib/capstan/pki/ca.crt' && cmp -s '$tmp/secrets/ca.key' '$r/var/lib/capstan/pki/ca.key' &&
    cmp -s '$tmp/secrets/join-token' '$r/var/lib/capstan/join-token' &&
    [ \$(stat -c %a '$r/var/lib/capstan/pki/ca.key') = 600 ] && [ \$(stat -c %a '$r/var/lib/capstan/join-token') = 600 ]"
check "agent.yaml holds the token and is 0600" \
  bash -c "[ $(mode "$r/etc/capstan/agent.yaml") = 600 ] && grep -q \"^token: \\\"\$(cat '$tmp/secrets/join-token')\\\"\$\" '$r/etc/capstan/agent.yaml'"
check "sysctl: forwarding" grep -q '^net.ipv4.ip_forward = 1$' "$r/etc/sysctl.d/90-capstan.conf"

# Every key of a rendered config must be a flag of the command that reads
# it (capstan refuses an unknown key at start: here it shows without one).
keys_are_flags() {
  local cmd=$1 file=$2 key flags missing=()
  flags=$("$capstan" "$cmd" --help | grep -oE -- '--[a-z0-9-]+' | sort -u)
  while IFS= read -r key; do
    grep -qx -- "--$key" <<<"$flags" || missing+=("$key")
  done < <(grep -oE '^[a-z0-9-]+:' "$file" | tr -d :)
  [ "${#missing[@]}" -eq 0 ] || { echo "      not flags of capstan $cmd: ${missing[*]}"; return 1; }
}
check "server.yaml keys are capstan server flags" keys_are_flags server "$r/etc/capstan/server.yaml"
check "agent.yaml keys are capstan agent flags" keys_are_flags agent "$r/etc/capstan/agent.yaml"
# Bound to the private address, the server writes its admin kubeconfig for
# it (for 0.0.0.0 it would name 127.0.0.1, useless on the host).
check "server.yaml: binds and advertises the server address" bash -c "
  grep -qx 'bind-address: \"192.168.56.10\"' '$r/etc/capstan/server.yaml' &&
  grep -qx 'advertise-address: \"192.168.56.10\"' '$r/etc/capstan/server.yaml'"
check "agent.yaml: server, node, device, CNI and image paths" bash -c "
  grep -qx 'server: \"https://192.168.56.10:6443\"' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'node-ip: \[\"192.168.56.11\"\]' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'devices: \[\"eth1\"\]' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'cni-bin-dir: \[\"$r/opt/cni/bin\"\]' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'ca-file: \"$r/etc/capstan/ca.crt\"' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'import-images: \[\]' '$r/etc/capstan/agent.yaml'"
# On a VM the socket LB serves the whole machine, as kube-proxy's rules do; the netns
# stage below renders without it, since this host's root cgroup is CI's own.
check "agent.yaml: the socket LB at the VM's root cgroup" grep -qx 'socket-lb-cgroup: "/"' "$r/etc/capstan/agent.yaml"

# The units run the rendered binary with the rendered config.
unit_exec() { sed -n 's/^ExecStart=//p' "$r/etc/systemd/system/$1"; }
check "capstan-server.service runs the rendered server" \
  test "$(unit_exec capstan-server.service)" = "$r/usr/local/bin/capstan server --config $r/etc/capstan/server.yaml"
check "capstan-agent.service runs the rendered agent" \
  test "$(unit_exec capstan-agent.service)" = "$r/usr/local/bin/capstan agent --config $r/etc/capstan/agent.yaml"
# Restarting the agent must leave the shims (in its cgroup) and so the pods.
check "capstan-agent.service: KillMode=process, no containerd.service" bash -c "
  grep -qx KillMode=process '$r/etc/systemd/system/capstan-agent.service' &&
  ! grep -q containerd.service '$r/etc/systemd/system/capstan-agent.service'"
if command -v systemd-analyze >/dev/null; then
  verify_units() {
    local out
    out=$(cd "$r/etc/systemd/system" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
      capstan-server.service capstan-agent.service 2>&1) || true
    # Units this machine has not (network-online, the server's unit for the
    # agent) are fine here.
    out=$(grep -vE 'network-online.target|Failed to (create|connect)|System has not been booted|bus|/etc/systemd/system/[^c]' <<<"$out" || true)
    [ -z "$out" ] || { printf '      %s\n' "$out"; return 1; }
  }
  check "systemd-analyze verify: both units" verify_units
fi

# A second run with the same settings rewrites nothing.
again=$(for s in common.sh server.sh agent.sh; do provision "$r" "$s" 2>&1; done)
check "a second run changes no file" bash -c "! grep -qE '(wrote|installed) ' <<<'$again'"

# rebuild NAME: a new build of bin/NAME (one byte more) in the source; prints
# what a run of the three scripts then said.
rebuild() {
  rm "$tmp/src/$1"
  { cat "$bin/$1"; printf x; } >"$tmp/src/$1"
  chmod 0755 "$tmp/src/$1"
  for s in common.sh server.sh agent.sh; do provision "$r" "$s" 2>&1; done
}
# ... and put the build back, and into the rendered root.
unbuild() {
  rm "$tmp/src/$1"
  ln -s "$bin/$1" "$tmp/src/$1"
  for s in common.sh server.sh agent.sh; do provision "$r" "$s" >/dev/null 2>&1; done
}
# A new build is installed and changes the units that run it (so they restart).
rebuilt_capstan() {
  local out
  out=$(rebuild capstan)
  cmp -s "$tmp/src/capstan" "$r/usr/local/bin/capstan" &&
    grep -q "wrote $r/etc/systemd/system/capstan-server.service" <<<"$out" &&
    grep -q "wrote $r/etc/systemd/system/capstan-agent.service" <<<"$out"
}
check "a new capstan binary is installed and rewrites both units" rebuilt_capstan
unbuild capstan
rebuilt_containerd() {
  local out
  out=$(rebuild containerd)
  cmp -s "$tmp/src/containerd" "$r/usr/local/bin/containerd" &&
    ! grep -q "wrote $r/etc/systemd/system/capstan-server.service" <<<"$out" &&
    grep -q "wrote $r/etc/systemd/system/capstan-agent.service" <<<"$out"
}
check "a new containerd is installed and rewrites the agent's unit only" rebuilt_containerd
unbuild containerd

# Settings that must be refused.
kernel_gate() {
  CAPSTAN_VM_ROOT=$tmp/r2 bash -c ". '$here/provision/env.sh' &&
    ! kernel_at_least 6.1.0-28-amd64 6 6 && ! kernel_at_least 5.19.0 6 6 &&
    kernel_at_least 6.12.48+deb13-amd64 6 6 && kernel_at_least 6.6.0 6 6 && kernel_at_least 7.0.1 6 6"
}
check "common.sh's kernel gate: 6.6 or later (tcx)" kernel_gate
# (env.sh alone, so that a broken guard changes nothing here either.)
refuses "the scripts refuse to change the machine they run on without CAPSTAN_VM_PROVISION=1" \
  env -u CAPSTAN_VM_PROVISION CAPSTAN_VM_ROOT= bash -c ". '$here/provision/env.sh'"
refuses "agent.sh refuses a bad node IP" provision "$tmp/r2" agent.sh CAPSTAN_VM_NODE_IP=192.168.56.300
refuses "agent.sh refuses a bad node name" provision "$tmp/r2" agent.sh CAPSTAN_VM_NODE_NAME=Agent_1
refuses "agent.sh refuses an unknown routing" provision "$tmp/r2" agent.sh CAPSTAN_VM_ROUTING=ipip
refuses "agent.sh needs a device holding the node IP" provision "$tmp/r2" agent.sh CAPSTAN_VM_DEVICE= CAPSTAN_VM_NODE_IP=192.0.2.77
refuses "server.sh refuses a bad server IP" provision "$tmp/r2" server.sh CAPSTAN_VM_SERVER_IP=server
refuses "server.sh needs the secrets" provision "$tmp/r2" server.sh CAPSTAN_VM_SECRETS="$tmp/none"
for s in server.sh agent.sh; do
  refuses "$s refuses a join token that is no bootstrap token" provision "$tmp/r2" "$s" CAPSTAN_VM_SECRETS="$tmp/old-secrets"
done
"$here/secrets.sh" "$tmp/other-secrets" 2>/dev/null
refuses "server.sh keeps a data dir made with other secrets" provision "$r" server.sh CAPSTAN_VM_SECRETS="$tmp/other-secrets"

# ---- 4. the rendered nodes, run in network namespaces
echo "== rendered server and agent in network namespaces (at $((SECONDS - start))s)"
netns_reason=
# The cgroup v2 hierarchy: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a
# hybrid host (the field after the "-" of /proc/self/mountinfo is the type).
cg2=$(awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
if [ "$(id -u)" -ne 0 ]; then
  netns_reason="not root"
elif ! command -v ip >/dev/null || ! ip netns add "vgchk-probe-$$" 2>/dev/null; then
  netns_reason="cannot make network namespaces"
else
  ip netns del "vgchk-probe-$$"
  # The agent runs in a cgroup of its own, which ends it with everything
  # it started (containerd, shims, pods) at once: cgroup.kill (Linux 5.14),
  # which a hierarchy's root has not.
  probe=$cg2/vgchk-probe-$$
  if [ -z "$cg2" ] || ! mkdir "$probe" 2>/dev/null; then
    netns_reason="no cgroup v2 hierarchy to make cgroups in"
  else
    [ -e "$probe/cgroup.kill" ] || netns_reason="no cgroup.kill in cgroup v2 (Linux 5.14)"
    rmdir "$probe"
  fi
  if [ -z "$netns_reason" ] && ! command -v runc >/dev/null; then
    netns_reason="no runc on PATH, which the agent's containerd runs containers with (apt-get install runc)"
  fi
fi

if [ -n "$netns_reason" ]; then
  skip "netns stage: $netns_reason"
  [ "${CI:-}" = true ] && bad "the netns stage must run under CI=true ($netns_reason)"
else
  id=$$
  srv=vgchk-srv-$id agt=vgchk-agt-$id node=vgchk-$id
  rs=$tmp/netns-server ra=$tmp/netns-agent
  node_cg=$cg2/capstan/$node
  # What the nodes change outside their roots, as `capstan down` undoes it
  # (cluster/down.go): the host-wide settings the kubelet changes
  # (protectKernelDefaults is off), and the host-wide directories a node
  # uses, removed if this check made them and no other node runs.
  kubelet_sysctls=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
    kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
  saved_sysctls=()
  for k in "${kubelet_sysctls[@]}"; do
    [ -r "/proc/sys/$k" ] && saved_sysctls+=("$k=$(cat "/proc/sys/$k")")
  done
  restore_sysctls() {
    local kv
    for kv in "${saved_sysctls[@]}"; do echo "${kv#*=}" >"/proc/sys/${kv%%=*}" || true; done
  }
  made_dirs=()
  for d in /var/lib/kubelet /var/lib/cni /var/log/containers /run/capstan; do
    [ -e "$d" ] || made_dirs+=("$d")
  done
  remove_made_dirs() {
    local d
    [ -z "$(find "$cg2/capstan" -mindepth 1 -maxdepth 1 -type d 2>/dev/null)" ] || return 0
    for d in "${made_dirs[@]}"; do rm -rf --one-file-system "$d"; done
  }
  cleanups+=(restore_sysctls remove_made_dirs)
  # The agent mounts bpffs at /sys/fs/bpf if it is not there: undo that.
  if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
    cleanups+=("[ -z \"\$(ls /sys/fs/bpf | grep -v '\\.debug\$')\" ] && umount /sys/fs/bpf")
  fi
  cleanups+=("ip netns del $srv 2>/dev/null" "ip netns del $agt 2>/dev/null")
  ip netns add "$srv"
  ip netns add "$agt"
  ip link add "vgs$id" netns "$srv" type veth peer name "vga$id" netns "$agt"
  ip -n "$srv" link set "vgs$id" name eth1
  ip -n "$agt" link set "vga$id" name eth1
  ip -n "$srv" addr add 192.168.56.10/24 dev eth1
  ip -n "$agt" addr add 192.168.56.11/24 dev eth1
  for ns in "$srv" "$agt"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth1 up
  done

  provision "$rs" common.sh 2>/dev/null
  provision "$rs" server.sh 2>/dev/null
  provision "$ra" common.sh 2>/dev/null
  # In the agent's namespace, with no device given: it must find eth1 by
  # the node's address, as on a VM.
  check "agent.sh finds the device holding the node IP" \
    ip netns exec "$agt" env CAPSTAN_VM_DEVICE= CAPSTAN_VM_NODE_NAME="$node" CAPSTAN_VM_SOCKET_LB_CGROUP= \
    bash -c "$(declare -f provision); $(declare -p tmp here); provision '$ra' agent.sh CAPSTAN_VM_DEVICE= CAPSTAN_VM_NODE_NAME='$node' CAPSTAN_VM_SOCKET_LB_CGROUP= 2>/dev/null &&
      grep -qx 'devices: \[\"eth1\"\]' '$ra/etc/capstan/agent.yaml'"

  # run_unit NS ROOT UNIT LOG [CGROUP]: the unit's ExecStart in the
  # namespace, as systemd would, in CGROUP (a v2 directory) if given.
  run_unit() {
    local ns=$1 root=$2 unit=$3 logf=$4 cg=${5:-} cmd
    cmd=$(sed -n 's/^ExecStart=//p' "$root/etc/systemd/system/$unit")
    # nsenter, not ip netns exec, which remounts /sys and so hides the
    # cgroup2 and bpf filesystems beneath it (as capstan up runs its nodes).
    # shellcheck disable=SC2086 # the unit's command line, split as systemd does
    (
      if [ -n "$cg" ]; then mkdir -p "$cg" && echo "$BASHPID" >"$cg/cgroup.procs"; fi
      exec nsenter --net="/run/netns/$ns" -- $cmd
    ) >"$logf" 2>&1 </dev/null &
    echo $!
  }
  # stop PID: SIGTERM, then SIGKILL after 10s.
  stop() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$1" 2>/dev/null || true
  }
  spid=$(run_unit "$srv" "$rs" capstan-server.service "$tmp/server.log")
  cleanups+=("stop $spid")
  apid=
  kc=$rs/var/lib/capstan/admin.kubeconfig
  for _ in $(seq 1 300); do [ -s "$kc" ] && break; sleep 0.2; done
  check "the server starts with secrets.sh's CA and writes its admin kubeconfig" test -s "$kc"
  check "the admin kubeconfig points at the server's address" grep -q 'server: https://192.168.56.10:6443$' "$kc"
  check "the server signs with secrets.sh's CA and keeps it and the token" \
    bash -c "grep -q \"certificate-authority-data: \$(base64 -w0 <'$tmp/secrets/ca.crt')\" '$kc' &&
      cmp -s '$tmp/secrets/ca.crt' '$rs/var/lib/capstan/pki/ca.crt' && cmp -s '$tmp/secrets/join-token' '$rs/var/lib/capstan/join-token'"

  # As server.sh waits before agent.sh runs: until the server accepts the
  # join token (it makes the token's Secret after /readyz), which an agent
  # asks first, stopping if refused.
  cat >"$tmp/join.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: capstan, cluster: {server: "https://192.168.56.10:6443", certificate-authority: "$tmp/secrets/ca.crt"}}]
users: [{name: join, user: {token: "$(cat "$tmp/secrets/join-token")"}}]
contexts: [{name: join, context: {cluster: capstan, user: join}}]
current-context: join
EOF
  in_srv() { nsenter --net="/run/netns/$srv" -- "$@"; }
  whoami=
  for _ in $(seq 1 120); do
    whoami=$(in_srv "$capstan" kubectl --kubeconfig "$tmp/join.kubeconfig" auth whoami -o jsonpath='{.status.userInfo.username}' 2>/dev/null) && break
    kill -0 "$spid" 2>/dev/null || break
    sleep 1
  done
  check "the server accepts secrets.sh's join token, as a bootstrap token ($whoami)" \
    test "$whoami" = "system:bootstrap:$(cut -d. -f1 "$tmp/secrets/join-token")"

  # What the agent leaves outside its root once stopped, removed as
  # cluster/down.go's removeNode does; run first, the agent's stop and the
  # end of every process in its cgroup (its containerd, the shims, pods).
  state=$ra/run/capstan/$node/containerd
  shim_dir=/run/capstan/shims/$(printf %s "$state" | sha256sum | cut -c1-12)
  kill_node_cgroup() {
    [ -d "$node_cg" ] || return 0
    echo 1 >"$node_cg/cgroup.kill"
    for _ in $(seq 1 100); do grep -q '^populated 0' "$node_cg/cgroup.events" && return 0; sleep 0.1; done
    echo "check.sh: processes left in $node_cg after 10s" >&2
  }
  # (libcni caches its results host-wide; the killed pods never got a DEL.)
  remove_cni_cache() {
    local d
    for d in "$state"/io.containerd.grpc.v1.cri/sandboxes/*; do
      [ -e "$d" ] && rm -f /var/lib/cni/results/capstan-"${d##*/}"-*
    done
    return 0
  }
  # The kubelet links every container's log into the host-wide
  # /var/log/containers; killed, it never removes the links.
  remove_log_links() {
    local l
    for l in /var/log/containers/*.log; do
      [ -L "$l" ] && [[ $(readlink "$l") == "$tmp"/* ]] && rm -f "$l"
    done
    return 0
  }
  # Deepest first, in every hierarchy (the kubelet makes its cgroup root in
  # the v1 ones too on a hybrid host); the shared parents only when empty.
  remove_node_cgroups() {
    local d
    find /sys/fs/cgroup -depth -type d \( -path "*/capstan/$node" -o -path "*/capstan/$node/*" \) 2>/dev/null |
      while IFS= read -r d; do rmdir "$d" 2>/dev/null || true; done
    for d in /sys/fs/cgroup/*/capstan /sys/fs/cgroup/capstan; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
    return 0
  }
  cleanups+=(remove_node_cgroups
    "rm -rf /sys/fs/bpf/capstan/$node; rmdir /sys/fs/bpf/capstan 2>/dev/null"
    "rm -rf '$shim_dir'; rmdir /run/capstan/shims 2>/dev/null"
    "unmount_under '$ra'" remove_cni_cache remove_log_links kill_node_cgroup)
  apid=$(run_unit "$agt" "$ra" capstan-agent.service "$tmp/agent.log" "$node_cg/agent")
  cleanups+=("stop $apid")

  kubectl() { in_srv "$capstan" kubectl --kubeconfig "$kc" "$@"; }
  # wait-nodes.sh in rounds of 5 s, for up to 3 minutes, unless the agent exits.
  node_ready() {
    local out
    for _ in $(seq 1 36); do
      out=$(in_srv env CAPSTAN="$capstan" "$here/wait-nodes.sh" "$kc" 1 5 2>&1) && { echo "$out"; return 0; }
      kill -0 "$apid" 2>/dev/null || { printf '%s\nthe agent exited\n' "$out"; return 1; }
    done
    echo "$out"
    return 1
  }
  if logged "$tmp/wait.log" "the agent joins and its node turns Ready (wait-nodes.sh)" node_ready; then
    sed 's/^/      /' "$tmp/wait.log"
    # (A path in the v2 hierarchy, as /proc/PID/cgroup shows it on "0::".)
    own_containerd() {
      local pid
      pid=$(pgrep -f -- "--config $state/config.toml" | head -1)
      [ -n "$pid" ] && [ -S "$state/containerd.sock" ] &&
        grep -qx "0::${node_cg#"$cg2"}/agent" "/proc/$pid/cgroup"
    }
    check "the agent runs its own containerd (its socket under the run dir), in the agent's cgroup" own_containerd
    check "the joined kubelet keeps the kubeconfig agent.sh waits for" test -s "$ra/var/lib/capstan/nodes/$node/kubelet/kubelet.kubeconfig"
    check "the node is the agent, with the node IP as InternalIP" \
      test "$(kubectl get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')" = 192.168.56.11
    cidr=$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')
    conf=$ra/etc/cni/net.d/10-capstan.conflist
    conf_ok() {
      [ -n "$cidr" ] || return 1
      if command -v jq >/dev/null; then
        jq -e --arg cidr "$cidr" --arg root "$ra" \
          '.plugins | length == 1 and .[0].type == "capstan-cni" and .[0].podCIDRs == [$cidr] and (.[0].dataDir | startswith($root))' "$conf" >/dev/null
      elif command -v python3 >/dev/null; then
        python3 - "$conf" "$cidr" "$ra" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["plugins"]
assert len(p) == 1 and p[0]["type"] == "capstan-cni" and p[0]["podCIDRs"] == [sys.argv[2]]
assert p[0]["dataDir"].startswith(sys.argv[3])
PY
      else
        grep -q '"type": "capstan-cni"' "$conf" && grep -q "\"$cidr\"" "$conf"
      fi
    }
    check "the agent wrote a CNI configuration naming capstan-cni for its podCIDR ($cidr)" conf_ok

    # A pod on the node: the sandbox image the agent made from capstan-pause
    # (also the container's image: nothing is pulled), runc, the CNI plugin
    # from /opt/cni/bin, an address from the podCIDR. It is still running
    # at the teardown, which must end it.
    in_cidr() {
      local a b c d ip net bits=${2#*/}
      IFS=. read -r a b c d <<<"$1"
      ip=$(((a << 24) | (b << 16) | (c << 8) | d))
      IFS=. read -r a b c d <<<"${2%/*}"
      net=$(((a << 24) | (b << 16) | (c << 8) | d))
      [ $(((ip ^ net) >> (32 - bits))) -eq 0 ]
    }
    pod_runs() {
      local ip
      # The default ServiceAccount comes shortly after the namespace.
      for _ in $(seq 1 30); do
        kubectl run vgchk --image=registry.k8s.io/pause:3.10.2 --image-pull-policy=Never --restart=Never && break
        sleep 1
      done
      kubectl wait --for=condition=Ready pod/vgchk --timeout=120s &&
        ip=$(kubectl get pod vgchk -o jsonpath='{.status.podIP}') &&
        echo "pod IP $ip, node $(kubectl get pod vgchk -o jsonpath='{.spec.nodeName}')" &&
        in_cidr "$ip" "$cidr" && [ -n "$(ls "$ra/var/lib/capstan/nodes/$node/ipam" 2>/dev/null)" ]
    }
    logged "$tmp/pod.log" "a pod runs on the node with an address from its podCIDR" pod_runs || true

    # netpol.sh (make vagrant-netpol) on this cluster, with vagrant, ssh and
    # go stubbed: the server "VM" hands over the kubeconfig the server wrote.
    mkdir -p "$tmp/stubs"
    stub() { printf '#!/bin/sh\n%s\n' "$2" >"$tmp/stubs/$1" && chmod +x "$tmp/stubs/$1"; }
    stub vagrant "case \"\$1\" in
up) echo \"vagrant \$*\" >>'$tmp/stub.calls' ;;
ssh-config) printf 'Host %s\\n  HostName 127.0.0.1\\n' \"\$2\" ;;
*) exit 1 ;;
esac"
    stub ssh "[ \"\$*\" = '-F $tmp/netpol-state/ssh-config capstan-server sudo cat /var/lib/capstan/admin.kubeconfig' ] || exit 1
cat '$kc'"
    stub go "echo \"CAPSTAN_NETPOL_KUBECONFIG=\$CAPSTAN_NETPOL_KUBECONFIG go \$*\" >>'$tmp/stub.calls'"
    netpol_flow() {
      in_srv env PATH="$tmp/stubs:$PATH" CAPSTAN_VAGRANT_STATE="$tmp/netpol-state" CAPSTAN_VAGRANT_BIN="$bin" \
        CAPSTAN_VAGRANT_AGENTS=1 CAPSTAN_VAGRANT_SERVER_AGENT=0 "$here/netpol.sh" &&
        grep -qx 'vagrant up --no-parallel' "$tmp/stub.calls" &&
        grep -qx "CAPSTAN_NETPOL_KUBECONFIG=$tmp/netpol-state/kubeconfig go test -tags netpol -count=1 -v -timeout 60m ./test/netpol/" "$tmp/stub.calls" &&
        cmp -s "$kc" "$tmp/netpol-state/kubeconfig" && [ "$(stat -c %a "$tmp/netpol-state/kubeconfig")" = 600 ]
    }
    logged "$tmp/netpol.log" "netpol.sh: up, kubeconfig over ssh, nodes Ready, the suite (vagrant, ssh, go stubbed)" netpol_flow || true
  else
    echo "---- server log (tail)"; tail -20 "$tmp/server.log"
    echo "---- agent log (tail)"; tail -30 "$tmp/agent.log"
    echo "---- containerd log (tail)"; tail -10 "$ra/var/lib/capstan/nodes/$node/containerd.log" 2>/dev/null || true
  fi

  # Tear down now, and check that nothing of the nodes is left.
  teardown_start=$SECONDS
  run_cleanups
  leftovers() {
    local left=() p kv
    ip netns list | grep -qE "^($srv|$agt)( |\$)" && left+=("network namespaces")
    [ -e "/sys/fs/bpf/capstan/$node" ] && left+=("BPF pins")
    [ -n "$(find /sys/fs/cgroup -type d -path "*/capstan/$node" 2>/dev/null)" ] && left+=("cgroups")
    kill -0 "$spid" 2>/dev/null && left+=("server process")
    kill -0 "$apid" 2>/dev/null && left+=("agent process")
    # containerd, shims: their command lines name the agent's root.
    for p in /proc/[0-9]*; do
      grep -qF -- "$tmp/" "$p/cmdline" 2>/dev/null && { left+=("process ${p#/proc/}: $(tr '\0' ' ' <"$p/cmdline" | cut -c1-80)"); }
    done
    awk -v d="$tmp" 'index($5, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo && left+=("mounts under $tmp")
    [ -e "$shim_dir" ] && left+=("shim sockets $shim_dir")
    # libcni's cached results name the pod's netns (under the agent's root).
    for p in /var/lib/cni/results/capstan-*; do
      grep -qF -- "$tmp/" "$p" 2>/dev/null && left+=("$p")
    done
    for p in /var/log/containers/*.log; do
      [[ $(readlink "$p") == "$tmp"/* ]] && left+=("$p")
    done
    for kv in "${saved_sysctls[@]}"; do
      [ "$(cat "/proc/sys/${kv%%=*}")" = "${kv#*=}" ] || left+=("sysctl ${kv%%=*}")
    done
    [ "${#left[@]}" -eq 0 ] || { printf '      left behind: %s\n' "${left[@]}"; return 1; }
  }
  check "nothing of the netns nodes is left after the teardown ($((SECONDS - teardown_start))s)" leftovers
fi

echo "$pass passed, $fail failed ($((SECONDS - start))s)"
[ "$fail" -eq 0 ]
