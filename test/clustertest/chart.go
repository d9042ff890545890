package clustertest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/internal/cgroup2"
)

// Chart is Capstan's Helm chart installed on a local cluster brought up
// with no network (cluster.Config.Network "none"), as users install it on
// a cluster of their own.
type Chart struct {
	// Helm is the helm binary (make helm), Root the repository, whose
	// deploy/helm/capstan is installed.
	Helm, Root string
	// Release, in kube-system, also names the DaemonSet.
	Release string
}

// ChartNamespace is where the chart is installed.
const ChartNamespace = "kube-system"

// Values are the chart's values for c: its API server (no kube-proxy
// serves the kubernetes Service), per-node CNI directories, since the nodes
// share the host's filesystem, and each node's cgroup for the socket load
// balancer.
func (ch Chart) Values(c *Cluster) (string, error) {
	u, err := url.Parse(c.Rest.Host)
	if err != nil {
		return "", err
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`k8sServiceHost: %q
k8sServicePort: %s
routing: %s
mode: %s
cni:
  binDir: %q
  confDir: %q
runDir: %q
cgroup:
  path: "/capstan/$(NODE_NAME)"
`, host, port, c.Cfg.Routing, c.Cfg.Mode,
		cluster.CNIBinDir(c.Cfg.DataDir, "$(NODE_NAME)"), cluster.CNIConfDir(c.Cfg.DataDir, "$(NODE_NAME)"), c.Cfg.RunDir), nil
}

// helm runs the helm CLI against c from the repository's root and returns
// its output.
func (ch Chart) helm(c *Cluster, args ...string) ([]byte, error) {
	cmd := exec.Command(ch.Helm, append([]string{"--kubeconfig", c.Kubeconfig, "-n", ChartNamespace}, args...)...)
	cmd.Dir = ch.Root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm %s: %v\n%s%s", args[0], err, out, stderr.String())
	}
	return out, nil
}

// withValues runs helm with c's Values in a file of their own.
func (ch Chart) withValues(c *Cluster, args ...string) ([]byte, error) {
	values, err := ch.Values(c)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp("", "capstan-values-*.yaml")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(values); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return ch.helm(c, append(args, "-f", f.Name())...)
}

// Install installs the chart with Values and waits until its DaemonSet is
// ready and every node Ready.
func (ch Chart) Install(c *Cluster) error {
	if _, err := ch.withValues(c, "install", ch.Release, "deploy/helm/capstan", "--wait", "--timeout", "4m"); err != nil {
		return err
	}
	return c.WaitNodesReady(3 * time.Minute)
}

// Render is the chart rendered with Values, as a manifest for kubectl
// apply (what deploy/kubernetes/capstan.yaml is with the defaults).
func (ch Chart) Render(c *Cluster) ([]byte, error) {
	return ch.withValues(c, "template", ch.Release, "deploy/helm/capstan")
}

// Uninstall removes the release and waits for its pods to be gone.
func (ch Chart) Uninstall(c *Cluster) error {
	if _, err := ch.helm(c, "uninstall", ch.Release, "--wait", "--timeout", "2m"); err != nil {
		return err
	}
	return ch.Gone(c)
}

// Gone waits until no pod of the chart is left.
func (ch Chart) Gone(c *Cluster) error {
	return Eventually(time.Minute, func() error {
		pods, err := c.CS.CoreV1().Pods(ChartNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=capstan"})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d capstan pods left", len(pods.Items))
		}
		return nil
	})
}

// Leftovers describes what Capstan left on node, nil if nothing: BPF pins
// and attachments, CNI configuration and plugins, pod records, routes, the
// VXLAN device, iptables chains.
func (c *Cluster) Leftovers(node string) error {
	var left []string
	for _, f := range []string{
		filepath.Join("/sys/fs/bpf/capstan", node),
		filepath.Join(cluster.CNIConfDir(c.Cfg.DataDir, node), "10-capstan.conflist"),
		filepath.Join(cluster.CNIBinDir(c.Cfg.DataDir, node), "capstan-cni"),
		filepath.Join(cluster.CNIBinDir(c.Cfg.DataDir, node), "capstan-portmap"),
		filepath.Join(c.Cfg.RunDir, node, "endpoints"),
		filepath.Join(c.Cfg.RunDir, node, "ipam"),
	} {
		if _, err := os.Stat(f); err == nil {
			left = append(left, f)
		}
	}
	checks := []struct {
		what string
		args []string
		bad  func(string) bool
	}{
		{"tc programs", []string{"bpftool", "net", "show"}, func(s string) bool { return strings.Contains(s, "tcx/") }},
		{"routes", []string{"ip", "route", "show", "proto", "0xca"}, func(s string) bool { return strings.TrimSpace(s) != "" }},
		{"VXLAN device", []string{"ip", "-o", "link", "show"}, func(s string) bool { return strings.Contains(s, "capstan-vxlan") }},
		{"iptables chains", []string{"iptables-save"}, func(s string) bool { return strings.Contains(s, "CAPSTAN-") }},
	}
	for _, ch := range checks {
		out, err := c.InNode(node, ch.args...)
		if err != nil {
			return fmt.Errorf("%s on %s: %v %s", strings.Join(ch.args, " "), node, err, out)
		}
		if ch.bad(out) {
			left = append(left, ch.what+":\n"+out)
		}
	}
	root, err := cgroup2.Root()
	if err != nil {
		return err
	}
	cg := filepath.Join(root, "capstan", node)
	if out, err := exec.Command("bpftool", "cgroup", "show", cg).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		left = append(left, fmt.Sprintf("cgroup programs on %s: %v %s", cg, err, out))
	}
	if len(left) > 0 {
		return fmt.Errorf("%s still has: %s", node, strings.Join(left, "; "))
	}
	return nil
}
