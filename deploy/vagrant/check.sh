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
#      addresses), with secrets.sh's CA and token: the agent finds its device
#      by address, joins, and its node turns Ready with its podCIDR and the
#      CNI configuration the agent wrote. Skipped (with the reason) when not
#      root or without netns or containerd, except under CI=true, where that
#      is a failure.
# Needs bin/capstan, bin/capstan-cni and bin/capstan-logdriver (make build).
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

for b in capstan capstan-cni capstan-logdriver; do
  [ -x "$bin/$b" ] || { echo "check.sh: no $bin/$b (make build)" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/capstan-vagrant-check.XXXXXX)
cleanups=()
# Teardown steps, run last first.
run_cleanups() {
  local i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
  cleanups=()
}
trap 'run_cleanups; rm -rf "$tmp"' EXIT

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
check "secrets.sh: join token, CA certificate and PKCS#8 key" \
  bash -c "grep -qE '^[0-9a-f]{48}\$' '$tmp/secrets/join-token' && grep -q 'BEGIN CERTIFICATE' '$tmp/secrets/ca.crt' && grep -q 'BEGIN PRIVATE KEY' '$tmp/secrets/ca.key'"
cp -r "$tmp/secrets" "$tmp/secrets.orig"
"$here/secrets.sh" "$tmp/secrets" 2>/dev/null
check "secrets.sh keeps what is there" diff -r "$tmp/secrets.orig" "$tmp/secrets"

# Only the binaries a node needs, not the rest of bin/.
mkdir -p "$tmp/src"
for b in capstan capstan-cni capstan-logdriver; do ln -s "$bin/$b" "$tmp/src/$b"; done

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
check "binaries installed: capstan and its log driver side by side, the CNI plugin in /opt/cni/bin" \
  test -x "$r/usr/local/bin/capstan" -a -x "$r/usr/local/bin/capstan-logdriver" -a -x "$r/opt/cni/bin/capstan-cni"
check "server data dir seeded with the host's CA and token (keys 0600)" \
  bash -c "cmp -s '$tmp/secrets/ca.crt' '$r/var/lib/capstan/pki/ca.crt' && cmp -s '$tmp/secrets/ca.key' '$r/var/lib/capstan/pki/ca.key' &&
    [ \$(stat -c %a '$r/var/lib/capstan/pki/ca.key') = 600 ] && [ \$(stat -c %a '$r/var/lib/capstan/join-token') = 600 ]"
check "agent.yaml holds the token and is 0600" \
  bash -c "[ $(mode "$r/etc/capstan/agent.yaml") = 600 ] && grep -q \"^token: \\\"\$(cat '$tmp/secrets/join-token')\\\"\$\" '$r/etc/capstan/agent.yaml'"
check "sysctl: forwarding" grep -q '^net.ipv4.ip_forward = 1$' "$r/etc/sysctl.d/90-capstan.conf"
check "containerd: CRI plugin off" grep -q 'disabled_plugins = \["io.containerd.grpc.v1.cri"\]' "$r/etc/containerd/config.toml"

# Every key of a rendered config must be a flag of the command that reads
# it: capstan ignores unknown keys, so a typo would pass unnoticed.
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
check "agent.yaml: server, node, device, CNI and image paths" bash -c "
  grep -qx 'server: \"https://192.168.56.10:6443\"' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'node-ip: \[\"192.168.56.11\"\]' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'dataplane-devices: \[\"eth1\"\]' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'cni-bin-dir: \[\"$r/opt/cni/bin\"\]' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'ca-file: \"$r/etc/capstan/ca.crt\"' '$r/etc/capstan/agent.yaml' &&
  grep -qx 'import-images: \[\]' '$r/etc/capstan/agent.yaml'"
# On a VM the socket LB serves the whole machine, as kube-proxy's rules do; the netns
# stage below renders without it, since this host's root cgroup is CI's own.
check "agent.yaml: the socket LB at the VM's root cgroup" grep -qx 'dataplane-cgroup: "/sys/fs/cgroup"' "$r/etc/capstan/agent.yaml"

# The units run the rendered binary with the rendered config.
unit_exec() { sed -n 's/^ExecStart=//p' "$r/etc/systemd/system/$1"; }
check "capstan-server.service runs the rendered server" \
  test "$(unit_exec capstan-server.service)" = "$r/usr/local/bin/capstan server --config $r/etc/capstan/server.yaml"
check "capstan-agent.service runs the rendered agent" \
  test "$(unit_exec capstan-agent.service)" = "$r/usr/local/bin/capstan agent --config $r/etc/capstan/agent.yaml"
if command -v systemd-analyze >/dev/null; then
  verify_units() {
    local out
    out=$(cd "$r/etc/systemd/system" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
      capstan-server.service capstan-agent.service 2>&1) || true
    # Units this machine has not (containerd, network-online) are fine here.
    out=$(grep -vE 'containerd.service|network-online.target|Failed to (create|connect)|System has not been booted|bus|/etc/systemd/system/[^c]' <<<"$out" || true)
    [ -z "$out" ] || { printf '      %s\n' "$out"; return 1; }
  }
  check "systemd-analyze verify: both units" verify_units
fi

# A second run with the same settings rewrites nothing.
again=$(for s in common.sh server.sh agent.sh; do provision "$r" "$s" 2>&1; done)
check "a second run changes no file" bash -c "! grep -qE '(wrote|installed) ' <<<'$again'"

# A new build is installed and changes the units (so they restart).
rebuilt() {
  local out
  rm "$tmp/src/capstan"
  { cat "$bin/capstan"; printf x; } >"$tmp/src/capstan"
  chmod 0755 "$tmp/src/capstan"
  out=$(for s in common.sh server.sh agent.sh; do provision "$r" "$s" 2>&1; done)
  cmp -s "$tmp/src/capstan" "$r/usr/local/bin/capstan" &&
    grep -q "wrote $r/etc/systemd/system/capstan-server.service" <<<"$out" &&
    grep -q "wrote $r/etc/systemd/system/capstan-agent.service" <<<"$out"
}
check "a new capstan binary is installed and rewrites both units" rebuilt
rm "$tmp/src/capstan"
ln -s "$bin/capstan" "$tmp/src/capstan"

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
"$here/secrets.sh" "$tmp/other-secrets" 2>/dev/null
refuses "server.sh keeps a data dir made with other secrets" provision "$r" server.sh CAPSTAN_VM_SECRETS="$tmp/other-secrets"

# ---- 4. the rendered nodes, run in network namespaces
echo "== rendered server and agent in network namespaces (at $((SECONDS - start))s)"
netns_reason=
sock=${CAPSTAN_CONTAINERD_SOCKET:-/run/capstan/containerd/containerd.sock}
if [ "$(id -u)" -ne 0 ]; then
  netns_reason="not root"
elif ! command -v ip >/dev/null || ! ip netns add "vgchk-probe-$$" 2>/dev/null; then
  netns_reason="cannot make network namespaces"
else
  ip netns del "vgchk-probe-$$"
  # A socket file alone proves nothing: one left by a containerd that has
  # since been killed (a session that ended, a reboot without tmpfs /run)
  # refuses connections, so ask it.
  if ! ctr --address "$sock" version >/dev/null 2>&1; then
    if command -v containerd >/dev/null; then
      "$repo/scripts/containerd.sh" start || netns_reason="scripts/containerd.sh could not start containerd"
    else
      netns_reason="containerd is not installed (scripts/install-deps.sh)"
    fi
  fi
fi

if [ -n "$netns_reason" ]; then
  skip "netns stage: $netns_reason"
  [ "${CI:-}" = true ] && bad "the netns stage must run under CI=true ($netns_reason)"
else
  id=$$
  srv=vgchk-srv-$id agt=vgchk-agt-$id node=vgchk-$id
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

  rs=$tmp/netns-server ra=$tmp/netns-agent
  provision "$rs" common.sh 2>/dev/null
  provision "$rs" server.sh 2>/dev/null
  provision "$ra" common.sh 2>/dev/null
  # In the agent's namespace, with no device given: it must find eth1 by
  # the node's address, as on a VM.
  check "agent.sh finds the device holding the node IP" \
    ip netns exec "$agt" env CAPSTAN_VM_DEVICE= CAPSTAN_VM_NODE_NAME="$node" CAPSTAN_VM_CONTAINERD_SOCKET="$sock" CAPSTAN_VM_DATAPLANE_CGROUP= \
    bash -c "$(declare -f provision); $(declare -p tmp here); provision '$ra' agent.sh CAPSTAN_VM_DEVICE= CAPSTAN_VM_NODE_NAME='$node' CAPSTAN_VM_CONTAINERD_SOCKET='$sock' CAPSTAN_VM_DATAPLANE_CGROUP= 2>/dev/null &&
      grep -qx 'dataplane-devices: \[\"eth1\"\]' '$ra/etc/capstan/agent.yaml'"

  # run NS ROOT UNIT LOG: the unit's ExecStart in the namespace, as systemd would.
  run_unit() {
    local ns=$1 root=$2 unit=$3 logf=$4 cmd
    cmd=$(sed -n 's/^ExecStart=//p' "$root/etc/systemd/system/$unit")
    # nsenter, not ip netns exec, which remounts /sys and so hides the
    # cgroup2 and bpf filesystems beneath it (as capstan up runs its nodes).
    # shellcheck disable=SC2086 # the unit's command line, split as systemd does
    nsenter --net="/run/netns/$ns" -- $cmd >"$logf" 2>&1 </dev/null &
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
  for _ in $(seq 1 150); do [ -s "$kc" ] && break; sleep 0.2; done
  check "the server starts with secrets.sh's CA and writes its admin kubeconfig" test -s "$kc"
  check "the admin kubeconfig points at the server's address" grep -q 'server: https://192.168.56.10:6443$' "$kc"
  check "the server signs with secrets.sh's CA" \
    bash -c "grep -q \"certificate-authority-data: \$(base64 -w0 <'$tmp/secrets/ca.crt')\" '$kc'"

  # What the agent leaves outside its root once stopped (capstan down
  # removes the same for its nodes); then, run first, the agent's stop.
  cleanups+=("ctr -a $sock namespaces rm capstan-$node >/dev/null 2>&1"
    "for d in \$(find /sys/fs/cgroup -depth -type d -path '*/capstan/$node*' 2>/dev/null); do rmdir \$d; done; rmdir /sys/fs/cgroup/capstan /sys/fs/cgroup/*/capstan 2>/dev/null"
    "rm -rf /sys/fs/bpf/capstan/$node; rmdir /sys/fs/bpf/capstan 2>/dev/null")
  apid=$(run_unit "$agt" "$ra" capstan-agent.service "$tmp/agent.log")
  cleanups+=("stop $apid")

  in_srv() { nsenter --net="/run/netns/$srv" -- "$@"; }
  if logged "$tmp/wait.log" "the agent joins and its node turns Ready (wait-nodes.sh)" \
    in_srv env CAPSTAN="$capstan" "$here/wait-nodes.sh" "$kc" 1 60; then
    sed 's/^/      /' "$tmp/wait.log"
    kubectl() { in_srv "$capstan" kubectl --kubeconfig "$kc" "$@"; }
    check "the joined node keeps the kubeconfig agent.sh waits for" test -s "$ra/var/lib/capstan/nodes/$node/pki/kubelet.kubeconfig"
    check "the node is the agent, with the node IP as InternalIP" \
      test "$(kubectl get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')" = 192.168.56.11
    cidr=$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')
    conf=$ra/etc/cni/net.d/10-capstan.conflist
    conf_ok() {
      [ -n "$cidr" ] || return 1
      if command -v jq >/dev/null; then
        jq -e --arg cidr "$cidr" --arg root "$ra" \
          '.plugins | length == 1 and .[0].type == "capstan-cni" and .[0].podCIDR == $cidr and (.[0].dataDir | startswith($root))' "$conf" >/dev/null
      elif command -v python3 >/dev/null; then
        python3 - "$conf" "$cidr" "$ra" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["plugins"]
assert len(p) == 1 and p[0]["type"] == "capstan-cni" and p[0]["podCIDR"] == sys.argv[2]
assert p[0]["dataDir"].startswith(sys.argv[3])
PY
      else
        grep -q '"type": "capstan-cni"' "$conf" && grep -q "\"podCIDR\": \"$cidr\"" "$conf"
      fi
    }
    check "the agent wrote a CNI configuration naming capstan-cni for its podCIDR ($cidr)" conf_ok

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
  fi

  # Tear down now, and check that nothing of the nodes is left.
  run_cleanups
  leftovers() {
    local left=()
    ip netns list | grep -qE "^($srv|$agt)( |\$)" && left+=("network namespaces")
    [ -e "/sys/fs/bpf/capstan/$node" ] && left+=("BPF pins")
    [ -n "$(find /sys/fs/cgroup -type d -path "*/capstan/$node" 2>/dev/null)" ] && left+=("cgroups")
    ctr -a "$sock" namespaces ls -q 2>/dev/null | grep -qx "capstan-$node" && left+=("containerd namespace")
    kill -0 "$spid" 2>/dev/null && left+=("server process")
    kill -0 "$apid" 2>/dev/null && left+=("agent process")
    [ "${#left[@]}" -eq 0 ] || { echo "      left behind: ${left[*]}"; return 1; }
  }
  check "nothing of the netns nodes is left after the teardown" leftovers
fi

echo "$pass passed, $fail failed ($((SECONDS - start))s)"
[ "$fail" -eq 0 ]
