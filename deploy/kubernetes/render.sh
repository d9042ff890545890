#!/bin/sh
# Render deploy/helm/capstan with its default values into
# deploy/kubernetes/capstan.yaml, for clusters installed without Helm.
# Usage: deploy/kubernetes/render.sh HELM   (HELM: a helm binary, e.g. bin/helm,
# which tools/helm/build.sh builds)
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
out=deploy/kubernetes/capstan.yaml
tmp=$out.tmp
trap 'rm -f "$tmp"' EXIT
{
	echo "# Generated from the chart deploy/helm/capstan by deploy/kubernetes/render.sh."
	echo "# Edit the chart, not this file, and run the script again."
	echo "# Apply with: kubectl apply -f deploy/kubernetes/capstan.yaml"
	"$helm" template capstan deploy/helm/capstan --namespace kube-system
} >"$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out"
