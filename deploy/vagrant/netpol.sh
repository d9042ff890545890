#!/usr/bin/env bash
# Brings up the Vagrant cluster (one server VM, CAPSTAN_VAGRANT_AGENTS agent
# VMs), fetches its admin kubeconfig, waits for every node to be Ready and
# runs the NetworkPolicy reachability suite against it from the host.
# `make vagrant-netpol` runs it after `make build images`. The VMs stay up
# afterwards: `vagrant destroy -f` in deploy/vagrant removes them.
# The provider is Vagrant's choice: VAGRANT_DEFAULT_PROVIDER=libvirt|virtualbox.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$here"

command -v vagrant >/dev/null || { echo "netpol.sh: vagrant is not installed" >&2; exit 1; }
bin=${CAPSTAN_VAGRANT_BIN:-$repo/bin}
[ -x "$bin/capstan" ] || { echo "netpol.sh: no $bin/capstan (make build images)" >&2; exit 1; }
# Secrets, ssh config and the fetched kubeconfig (check.sh points it elsewhere;
# the Vagrantfile's trigger makes the VMs' secrets in .capstan all the same).
state=${CAPSTAN_VAGRANT_STATE:-$here/.capstan}

# The same defaults as the Vagrantfile.
subnet=${CAPSTAN_VAGRANT_SUBNET:-192.168.56}
agents=${CAPSTAN_VAGRANT_AGENTS:-2}
nodes=$agents
[ "${CAPSTAN_VAGRANT_SERVER_AGENT:-1}" = 1 ] && nodes=$((nodes + 1))
server_url=https://$subnet.10:6443

./secrets.sh "$state"
# In order, so that the server is up before the agents join (libvirt would
# otherwise start all machines at once).
vagrant up --no-parallel

# The server writes its admin kubeconfig for its private-network address.
kubeconfig=$state/kubeconfig
vagrant ssh-config capstan-server >"$state/ssh-config"
ssh -F "$state/ssh-config" capstan-server sudo cat /var/lib/capstan/admin.kubeconfig >"$kubeconfig.tmp"
chmod 0600 "$kubeconfig.tmp"
mv -f "$kubeconfig.tmp" "$kubeconfig"
grep -q "server: $server_url\$" "$kubeconfig" || {
  echo "netpol.sh: $kubeconfig does not point at $server_url" >&2
  exit 1
}
echo "netpol.sh: kubeconfig $kubeconfig ($server_url)"

CAPSTAN=$bin/capstan "$here/wait-nodes.sh" "$kubeconfig" "$nodes" 600

cd "$repo"
CAPSTAN_NETPOL_KUBECONFIG=$kubeconfig go test -tags netpol -count=1 -v -timeout 60m ./test/netpol/
