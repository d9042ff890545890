// Command kube-proxy is the unmodified upstream Kubernetes kube-proxy
// (k8s.io/kubernetes/cmd/kube-proxy), built from the Go module proxy as a
// separate module: Capstan's own binary never starts kube-proxy, so it does
// not link it. It mirrors upstream cmd/kube-proxy/proxy.go.
//
// Use it with a Capstan node agent running in `--mode none`.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // for client metric registration
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	command := app.NewProxyCommand()
	code := cli.Run(command)
	os.Exit(code)
}
