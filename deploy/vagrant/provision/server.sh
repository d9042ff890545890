#!/usr/bin/env bash
# Runs `capstan server` (API server, embedded etcd, scheduler, controllers)
# as the systemd unit capstan-server, with the cluster CA and join token
# made on the host (secrets.sh), so that agents can trust the server and
# join without fetching anything from it. Run common.sh first.
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

# The server loads a CA and a join token it finds in its data dir and makes
# them only when they are missing. A data dir made with other secrets keeps
# its own: agents given the new ones could not join, so stop here.
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

# Keys are `capstan server` flag names (--config); the advertise address
# goes into the serving certificate and the admin kubeconfig.
changed=0
write_file 0644 "$etc_dir/server.yaml" <<EOF
# capstan server --config: keys are flag names (capstan server --help).
data-dir: $(yaml_str "$data_dir")
bind-address: "0.0.0.0"
advertise-address: $(yaml_str "$CAPSTAN_VM_SERVER_IP")
secure-port: $CAPSTAN_VM_SERVER_PORT
cluster-cidr: $(yaml_str "$CAPSTAN_VM_CLUSTER_CIDR")
service-cidr: $(yaml_str "$CAPSTAN_VM_SERVICE_CIDR")
log-level: $(yaml_str "$CAPSTAN_VM_LOG_LEVEL")
EOF
write_unit capstan-server "Capstan control plane (API server on etcd, scheduler, controllers)" \
  network-online.target network-online.target "server --config $etc_dir/server.yaml"

start_unit capstan-server

kubeconfig=$data_dir/admin.kubeconfig
ready() { [ -f "$kubeconfig" ] && "$bin_dir/capstan" kubectl --kubeconfig "$kubeconfig" get --raw /readyz; }
wait_unit capstan-server 120 "capstan server did not become ready" ready
if on "$CAPSTAN_VM_SYSTEMD"; then
  log "capstan server ready on https://$CAPSTAN_VM_SERVER_IP:$CAPSTAN_VM_SERVER_PORT (kubeconfig $kubeconfig)"
fi
