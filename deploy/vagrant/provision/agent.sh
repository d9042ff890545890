#!/usr/bin/env bash
# Runs `capstan agent` (the kubelet and the node's eBPF dataplane) as the
# systemd unit capstan-agent: installs the CNI plugin into /opt/cni/bin,
# prepares /etc/cni/net.d (the agent writes 10-capstan.conflist there once
# the node has its podCIDR), and joins the server with the host-made join
# token and CA. Run common.sh first.
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
# The kubelet uses the first configuration list (by name) in the directory.
for f in "$cni_conf_dir"/*.conflist; do
  [ -e "$f" ] || continue
  [ "${f##*/}" = 10-capstan.conflist ] || log "warning: $f is not Capstan's; the agent uses the first .conflist by name"
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
if [ -n "$CAPSTAN_VM_DATAPLANE_CGROUP" ]; then
  optional+="dataplane-cgroup: $(yaml_str "$CAPSTAN_VM_DATAPLANE_CGROUP")"
fi
# Keys are `capstan agent` flag names (--config). The token is needed for
# the first start only (the node keeps its certificates), hence mode 0600.
write_file 0600 "$etc_dir/agent.yaml" <<EOF
# capstan agent --config: keys are flag names (capstan agent --help).
server: $(yaml_str "https://$CAPSTAN_VM_SERVER_IP:$CAPSTAN_VM_SERVER_PORT")
token: $(yaml_str "$(tr -d '[:space:]' <"$CAPSTAN_VM_SECRETS/join-token")")
ca-file: $(yaml_str "$etc_dir/ca.crt")
node-name: $(yaml_str "$node")
node-ip: [$(yaml_str "$CAPSTAN_VM_NODE_IP")]
data-dir: $(yaml_str "$data_dir")
run-dir: $(yaml_str "$run_dir")
containerd-socket: $(yaml_str "$CAPSTAN_VM_CONTAINERD_SOCKET")
cni-conf-dir: $(yaml_str "$cni_conf_dir")
cni-bin-dir: [$(yaml_str "$cni_bin_dir")]
import-images: [$image_list]
dataplane-devices: [$(yaml_str "$device")]
routing: $(yaml_str "$CAPSTAN_VM_ROUTING")
mode: $(yaml_str "$CAPSTAN_VM_MODE")
cluster-cidr: $(yaml_str "$CAPSTAN_VM_CLUSTER_CIDR")
service-cidr: $(yaml_str "$CAPSTAN_VM_SERVICE_CIDR")
log-level: $(yaml_str "$CAPSTAN_VM_LOG_LEVEL")
${optional}
EOF
# Pods are containerd's (their shims live in containerd's cgroup), so
# stopping or restarting the agent leaves them running, as with a kubelet.
write_unit capstan-agent "Capstan node agent (kubelet and eBPF dataplane)" \
  "network-online.target containerd.service" "network-online.target containerd.service capstan-server.service" \
  "agent --config $etc_dir/agent.yaml" "LimitMEMLOCK=infinity"

start_unit capstan-agent

# A joined node keeps its kubeconfig; wait for it, so that a wrong token,
# CA or server address fails the provisioning rather than a later test.
wait_unit capstan-agent 180 "node $node did not join" test -f "$data_dir/nodes/$node/pki/kubelet.kubeconfig"
if on "$CAPSTAN_VM_SYSTEMD"; then
  log "node $node joined https://$CAPSTAN_VM_SERVER_IP:$CAPSTAN_VM_SERVER_PORT (device $device)"
fi
