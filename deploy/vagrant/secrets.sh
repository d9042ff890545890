#!/usr/bin/env bash
# Makes the cluster's bootstrap secrets on the host, once: a join token (a
# Kubernetes bootstrap token, [a-z0-9]{6}.[a-z0-9]{16}, the only kind capstan
# accepts) and a CA (EC P-256, key in PKCS#8 as capstan writes its own). The
# server VM starts with them (capstan server uses the pki/ca.crt, pki/ca.key
# and join-token it finds in its data dir), and the agents join with the
# token and trust the server with the CA, so nothing has to travel from a VM
# back to the host or to another VM: the folder reaches every VM by a
# one-way rsync.
# Usage: secrets.sh [DIR]   (default: .capstan beside this script)
# Needs openssl. Keeps what is there; remove DIR (and the VMs) to start over.
set -euo pipefail
dir=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.capstan}
command -v openssl >/dev/null || { echo "secrets.sh: openssl is required" >&2; exit 1; }
umask 077
mkdir -p "$dir"

if [ ! -s "$dir/join-token" ]; then
  # 1 KiB of randomness keeps about 144 characters of [a-z0-9], uniformly
  # drawn; the token needs 22.
  chars=$(openssl rand 1024 | LC_ALL=C tr -dc 'a-z0-9')
  [ "${#chars}" -ge 22 ] || { echo "secrets.sh: not enough random characters for a token" >&2; exit 1; }
  printf '%s.%s\n' "${chars:0:6}" "${chars:6:16}" >"$dir/join-token.tmp"
  mv -f "$dir/join-token.tmp" "$dir/join-token"
  echo "secrets.sh: made $dir/join-token" >&2
fi
# A token of an older secrets.sh (48 hex digits) is refused by capstan.
if ! [[ $(tr -d '[:space:]' <"$dir/join-token") =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]]; then
  echo "secrets.sh: $dir/join-token is not a bootstrap token (an older secrets.sh made it); remove $dir (and destroy the VMs: vagrant destroy -f) to start over" >&2
  exit 1
fi

if [ -s "$dir/ca.crt" ] && [ -s "$dir/ca.key" ]; then
  exit 0
fi
if [ -s "$dir/ca.crt" ] || [ -s "$dir/ca.key" ]; then
  echo "secrets.sh: $dir has only one of ca.crt and ca.key; remove it to start over" >&2
  exit 1
fi
conf=$(mktemp)
trap 'rm -f "$conf" "$dir/ca.key.tmp" "$dir/ca.crt.tmp" "$dir/join-token.tmp"' EXIT
cat >"$conf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = capstan-ca
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, digitalSignature, keyEncipherment
subjectKeyIdentifier = hash
EOF
openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$dir/ca.key.tmp"
openssl req -x509 -new -config "$conf" -key "$dir/ca.key.tmp" -sha256 -days 3650 -out "$dir/ca.crt.tmp"
chmod 0644 "$dir/ca.crt.tmp"
mv -f "$dir/ca.key.tmp" "$dir/ca.key"
mv -f "$dir/ca.crt.tmp" "$dir/ca.crt"
echo "secrets.sh: made $dir/ca.crt and $dir/ca.key" >&2
