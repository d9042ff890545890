#!/usr/bin/env bash
# Runs `capstan agent` (its own containerd v2, the upstream kubelet and the
# node's eBPF dataplane) as the systemd unit capstan-agent: installs the CNI
# plugin into /opt/cni/bin, prepares /etc/cni/net.d (the agent writes
# 10-capstan.conflist there once its dataplane is attached and the node has
# its podCIDR), and joins the server with the host-made join token (kubelet
# TLS bootstrapping) and CA. Run common.sh first.
# Settings: provision/env.sh; CAPSTAN_VM_NODE_IP is required. Run as root;
# safe to run again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

node=$CAPSTAN_VM_NODE_NAME
is_node_name "$node" || die "node name '$node' is not a DNS-1123 name (CAPSTAN_VM_NODE_NAME)"
is_ipv4 "$CAPSTAN_VM_NODE_IP" || die "CAPSTAN_VM_NODE_IP='$CAPSTAN_VM_NODE_IP' is not an IPv4 address"
is_ipv4 "$CAPSTAN_VM_SERVER_IP" || die "CAPSTAN_VM_SERVER_IP='$CAPSTAN_VM_SERVER_IP' is not an IPv4 address"
is_cidr "$CAPSTAN_VM_CLUSTER_CIDR" || die "CAPSTAN_VM_CLUSTER_CIDR=$CAPSTAN_VM_CLUSTER_CIDR is not an IPv4 prefix"
is_cidr "$CAPSTAN_VM_SERVICE_CIDR" || die "CAPSTAN_VM_SERVICE_CIDR=$CAPSTAN_VM_SERVICE_CIDR is not an IPv4 prefix"
case $CAPSTAN_VM_ROUTING in native | vxlan) ;; *) die "CAPSTAN_VM_ROUTING=$CAPSTAN_VM_ROUTING: want native or vxlan" ;; esac
case $CAPSTAN_VM_MODE in ebpf | iptables) ;; *) die "CAPSTAN_VM_MODE=$CAPSTAN_VM_MODE: want ebpf or iptables" ;; esac
for f in join-token ca.crt; do
  [ -s "$CAPSTAN_VM_SECRETS/$f" ] || die "missing $CAPSTAN_VM_SECRETS/$f (deploy/vagrant/secrets.sh makes it on the host)"
done
is_bootstrap_token "$CAPSTAN_VM_SECRETS/join-token" ||
  die "$CAPSTAN_VM_SECRETS/join-token is not a bootstrap token (an older secrets.sh made it): remove $CAPSTAN_VM_SECRETS on the host and destroy the VMs"

# The NodePort programs go on the device that carries the node's address
# (eth1 on a Vagrant private network; eth0 is the provider's NAT).
device=$CAPSTAN_VM_DEVICE
if [ -z "$device" ]; then
  device=$(device_of "$CAPSTAN_VM_NODE_IP")
  [ -n "$device" ] || die "no interface holds $CAPSTAN_VM_NODE_IP (set CAPSTAN_VM_DEVICE)"
fi
[[ $device =~ ^[A-Za-z0-9_.@-]{1,15}$ ]] || die "device '$device' is not an interface name"

# Whatever this run changes (plugin, images, CA, config, unit) restarts the agent.
changed=0
install_file 0755 "$CAPSTAN_VM_SRC/capstan-cni" "$cni_bin_dir/capstan-cni"
mkdir -p "$cni_conf_dir"
# containerd's CRI plugin uses the first configuration list (by name) there.
for f in "$cni_conf_dir"/*.conflist; do
  [ -e "$f" ] || continue
  [ "${f##*/}" = 10-capstan.conflist ] || log "warning: $f is not Capstan's; containerd uses the first .conflist by name"
done

images=()
if [ -f "$CAPSTAN_VM_SRC/images/capstan-test-images.tar" ]; then
  install_file 0644 "$CAPSTAN_VM_SRC/images/capstan-test-images.tar" "$images_dir/capstan-test-images.tar"
  images+=("$images_dir/capstan-test-images.tar")
else
  log "warning: no $CAPSTAN_VM_SRC/images/capstan-test-images.tar (make images): pods need images from elsewhere"
fi

write_file 0644 "$etc_dir/ca.crt" <"$CAPSTAN_VM_SECRETS/ca.crt"

image_list=
for i in "${images[@]}"; do image_list+="${image_list:+, }$(yaml_str "$i")"; done
optional=
if [ -n "$CAPSTAN_VM_SOCKET_LB_CGROUP" ]; then
  optional+="socket-lb-cgroup: $(yaml_str "$CAPSTAN_VM_SOCKET_LB_CGROUP")"
fi
# Keys are `capstan agent` flag names (--config; an unknown key is an error).
# The token is needed for the first start only (the kubelet then has its own
# certificate), hence mode 0600. containerd's state is under run-dir, its
# images under data-dir; pods run under the cgroup /capstan/<node>.
write_file 0600 "$etc_dir/agent.yaml" <<EOF
# capstan agent --config: keys are flag names (capstan agent --help).
server: $(yaml_str "https://$CAPSTAN_VM_SERVER_IP:$CAPSTAN_VM_SERVER_PORT")
token: $(yaml_str "$(tr -d '[:space:]' <"$CAPSTAN_VM_SECRETS/join-token")")
ca-file: $(yaml_str "$etc_dir/ca.crt")
node-name: $(yaml_str "$node")
node-ip: [$(yaml_str "$CAPSTAN_VM_NODE_IP")]
data-dir: $(yaml_str "$data_dir")
run-dir: $(yaml_str "$run_dir")
cni-conf-dir: $(yaml_str "$cni_conf_dir")
cni-bin-dir: [$(yaml_str "$cni_bin_dir")]
import-images: [$image_list]
devices: [$(yaml_str "$device")]
routing: $(yaml_str "$CAPSTAN_VM_ROUTING")
mode: $(yaml_str "$CAPSTAN_VM_MODE")
cluster-cidr: $(yaml_str "$CAPSTAN_VM_CLUSTER_CIDR")
service-cidr: $(yaml_str "$CAPSTAN_VM_SERVICE_CIDR")
log-level: $(yaml_str "$CAPSTAN_VM_LOG_LEVEL")
${optional}
EOF
# The agent's containerd and the containers' shims are children of the
# agent, in this unit's cgroup (the containers themselves are in the pods'
# cgroups under /capstan/<node>). KillMode=process and Delegate=yes, as
# containerd.service has them: stopping or restarting the agent ends the
# agent, which stops its containerd, and leaves the shims and pods running,
# as with a kubelet; the next containerd takes them over.
write_unit capstan-agent "Capstan node agent (containerd, kubelet and eBPF dataplane)" \
  network-online.target "network-online.target capstan-server.service" "${node_binaries[*]}" \
  "agent --config $etc_dir/agent.yaml" "LimitMEMLOCK=infinity" "KillMode=process" "Delegate=yes"

start_unit capstan-agent

# A joined node's kubelet has its own kubeconfig (TLS bootstrapping done);
# wait for it, so that a wrong token, CA or server address fails the
# provisioning rather than a later test.
wait_unit capstan-agent 180 "node $node did not join" test -s "$data_dir/nodes/$node/kubelet/kubelet.kubeconfig"
if on "$CAPSTAN_VM_SYSTEMD"; then
  log "node $node joined https://$CAPSTAN_VM_SERVER_IP:$CAPSTAN_VM_SERVER_PORT (device $device)"
fi
