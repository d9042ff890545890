#!/bin/sh
# Check the chart with the upstream Helm CLI (make chart-check): it lints,
# its schema refuses bad values with a message naming the key, and
# deploy/kubernetes/capstan.yaml is the chart rendered as it is now.
# Usage: deploy/helm/check.sh HELM
set -eu
if [ $# -ne 1 ]; then
	echo "usage: $0 HELM" >&2
	exit 2
fi
helm=$1
case $helm in
*/*) helm=$(cd "$(dirname "$helm")" && pwd)/$(basename "$helm") ;;
esac
cd "$(dirname "$0")/../.."
chart=deploy/helm/capstan
fail=0
"$helm" lint --strict "$chart" >/dev/null || { echo "chart-check: helm lint failed" >&2; fail=1; }

# refused KEY SET...: rendering with the --set values must fail naming KEY.
refused() {
	key=$1
	shift
	if out=$("$helm" template capstan "$chart" "$@" 2>&1); then
		echo "chart-check: $* was accepted" >&2
		fail=1
	elif ! printf '%s' "$out" | grep -q "$key"; then
		echo "chart-check: $* was refused without naming $key: $out" >&2
		fail=1
	fi
}
refused mode --set mode=foo
refused routing --set routing=geneve
refused lbAlgorithm --set lbAlgorithm=fastest
refused clusterCIDR --set clusterCIDR=10.244.0.0/33
refused clusterCIDR --set clusterCIDR=banana
refused serviceCIDR --set serviceCIDR=10.96.0.0
refused mtu --set mtu=100
refused k8sServicePort --set k8sServicePort=70000
refused masqurade --set masqurade=false

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$helm" template capstan "$chart" --namespace kube-system >"$tmp"
if ! tail -n +4 deploy/kubernetes/capstan.yaml | cmp -s - "$tmp"; then
	echo "chart-check: deploy/kubernetes/capstan.yaml is not the chart as it is: make manifests" >&2
	fail=1
fi
[ "$fail" = 0 ] && echo "chart-check: ok"
exit "$fail"
