#!/usr/bin/env bash
# Runs `capstan server` (the upstream kube-apiserver, kube-controller-manager
# and kube-scheduler in one process, on an embedded etcd) as the systemd unit
# capstan-server, with the cluster CA and join token (a bootstrap token) made
# on the host (secrets.sh), so that agents can trust the server and join
# without fetching anything from it. Run common.sh first.
# Settings: provision/env.sh. Run as root; safe to run again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

is_ipv4 "$CAPSTAN_VM_SERVER_IP" || die "CAPSTAN_VM_SERVER_IP=$CAPSTAN_VM_SERVER_IP is not an IPv4 address"
if ! [[ $CAPSTAN_VM_SERVER_PORT =~ ^[0-9]{1,5}$ ]] || [ "$CAPSTAN_VM_SERVER_PORT" -lt 1 ] || [ "$CAPSTAN_VM_SERVER_PORT" -gt 65535 ]; then
  die "CAPSTAN_VM_SERVER_PORT=$CAPSTAN_VM_SERVER_PORT is not a port"
fi
is_cidr "$CAPSTAN_VM_CLUSTER_CIDR" || die "CAPSTAN_VM_CLUSTER_CIDR=$CAPSTAN_VM_CLUSTER_CIDR is not an IPv4 prefix"
is_cidr "$CAPSTAN_VM_SERVICE_CIDR" || die "CAPSTAN_VM_SERVICE_CIDR=$CAPSTAN_VM_SERVICE_CIDR is not an IPv4 prefix"
for f in join-token ca.crt ca.key; do
  [ -s "$CAPSTAN_VM_SECRETS/$f" ] || die "missing $CAPSTAN_VM_SECRETS/$f (deploy/vagrant/secrets.sh makes it on the host)"
done
is_bootstrap_token "$CAPSTAN_VM_SECRETS/join-token" ||
  die "$CAPSTAN_VM_SECRETS/join-token is not a bootstrap token (an older secrets.sh made it): remove $CAPSTAN_VM_SECRETS on the host and destroy the VMs"

# The server uses a CA (pki/ca.crt and ca.key, kubeadm's layout) and a join
# token it finds in its data dir, and makes them only when they are missing;
# the rest of pki/, the kubeconfigs and etcd it makes on its first start. A
# data dir made with other secrets keeps its own: agents given the new ones
# could not join, so stop here.
seed() {
  local mode=$1 src=$2 dst=$3
  if [ -f "$dst" ]; then
    cmp -s <(tr -d '[:space:]' <"$src") <(tr -d '[:space:]' <"$dst") ||
      die "$dst differs from $src: this server was made with other secrets (vagrant destroy, or remove $data_dir)"
    return 0
  fi
  install_file "$mode" "$src" "$dst"
}
mkdir -p "$data_dir/pki"
chmod 0700 "$data_dir" "$data_dir/pki"
seed 0600 "$CAPSTAN_VM_SECRETS/join-token" "$data_dir/join-token"
seed 0644 "$CAPSTAN_VM_SECRETS/ca.crt" "$data_dir/pki/ca.crt"
seed 0600 "$CAPSTAN_VM_SECRETS/ca.key" "$data_dir/pki/ca.key"

# Keys are `capstan server` flag names (--config; an unknown key is an
# error). The server listens on its private address only: the admin
# kubeconfig and the components' point where it binds (127.0.0.1 would be
# written for 0.0.0.0), and the host reads the admin one (netpol.sh). The
# address is also in the serving certificate and the kubernetes Service.
changed=0
write_file 0644 "$etc_dir/server.yaml" <<EOF
# capstan server --config: keys are flag names (capstan server --help).
data-dir: $(yaml_str "$data_dir")
bind-address: $(yaml_str "$CAPSTAN_VM_SERVER_IP")
advertise-address: $(yaml_str "$CAPSTAN_VM_SERVER_IP")
secure-port: $CAPSTAN_VM_SERVER_PORT
cluster-cidr: $(yaml_str "$CAPSTAN_VM_CLUSTER_CIDR")
service-cidr: $(yaml_str "$CAPSTAN_VM_SERVICE_CIDR")
log-level: $(yaml_str "$CAPSTAN_VM_LOG_LEVEL")
EOF
write_unit capstan-server "Capstan control plane (kube-apiserver, kube-controller-manager, kube-scheduler on etcd)" \
  network-online.target network-online.target capstan "server --config $etc_dir/server.yaml"

start_unit capstan-server

# Agents can join once the server accepts the join token: it makes the
# token's Secret only after /readyz, and an agent whose token is refused
# stops (systemd would start it again 5 s later). So wait until the token's
# holder is known, as an agent first asks (kubectl auth whoami).
kubeconfig=$data_dir/admin.kubeconfig
url=https://$CAPSTAN_VM_SERVER_IP:$CAPSTAN_VM_SERVER_PORT
if on "$CAPSTAN_VM_SYSTEMD"; then
  join_kubeconfig=$(mktemp)
  trap 'rm -f "$join_kubeconfig"' EXIT
  cat >"$join_kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: capstan, cluster: {server: $(yaml_str "$url"), certificate-authority: $(yaml_str "$data_dir/pki/ca.crt")}}]
users: [{name: join, user: {token: $(yaml_str "$(tr -d '[:space:]' <"$data_dir/join-token")")}}]
contexts: [{name: join, context: {cluster: capstan, user: join}}]
current-context: join
EOF
fi
ready() {
  [ -f "$kubeconfig" ] && "$bin_dir/capstan" kubectl --kubeconfig "$kubeconfig" get --raw /readyz &&
    "$bin_dir/capstan" kubectl --kubeconfig "$join_kubeconfig" auth whoami
}
wait_unit capstan-server 120 "capstan server did not become ready and accept the join token" ready
if on "$CAPSTAN_VM_SYSTEMD"; then
  log "capstan server ready on $url, accepting the join token (kubeconfig $kubeconfig)"
fi
