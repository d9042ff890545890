//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/internal/cgroup2"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

// installed: the clusters whose network is Capstan's chart, installed on a
// cluster brought up with none, as users install Cilium or Calico.
func installed(cc clusterCase) bool { return cc.install != "" }

// notInstalled: the scenarios that restart or reconfigure `capstan agent`'s
// own dataplane.
func notInstalled(cc clusterCase) bool { return cc.install == "" }

const (
	releaseNS   = "kube-system"
	daemonSetID = "capstan"
)

// installBin is where make left helm and the node image.
func installBin(t *testing.T) string {
	return makeBin(t, "make helm node-image", "helm", filepath.Join("images", "capstan.tar"))
}

// installValues are the chart's values for a `capstan up` cluster: nodes
// share the host's filesystem, so their CNI directories are per node
// ($(NODE_NAME)), and the socket load balancer serves each node's cgroup.
func (e *env) installValues(t *testing.T) string {
	u, err := url.Parse(e.c.Rest.Host)
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	values := fmt.Sprintf(`k8sServiceHost: %q
k8sServicePort: %s
routing: %s
mode: %s
cni:
  binDir: %q
  confDir: %q
runDir: %q
cgroup:
  path: "/capstan/$(NODE_NAME)"
`, host, port, e.cc.routing, e.cc.mode,
		cluster.CNIBinDir(e.cfg.DataDir, "$(NODE_NAME)"), cluster.CNIConfDir(e.cfg.DataDir, "$(NODE_NAME)"), e.cfg.RunDir)
	path := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(path, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// helm runs the upstream helm CLI against the cluster, from the
// repository's root (the chart is deploy/helm/capstan).
func (e *env) helm(t *testing.T, args ...string) (string, error) {
	root, err := testbin.RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(installBin(t), "helm"), append([]string{"--kubeconfig", e.kubeconfig, "-n", releaseNS}, args...)...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// install puts Capstan on the cluster with the chart and waits for every
// node to turn Ready, which it does only once the dataplane is attached.
func (e *env) install(t *testing.T) {
	start := time.Now()
	values := e.installValues(t)
	if out, err := e.helm(t, "install", daemonSetID, "deploy/helm/capstan", "-f", values, "--wait", "--timeout", "4m"); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	if err := e.c.WaitNodesReady(3 * time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("helm install: every node Ready %v after it started", time.Since(start).Round(100*time.Millisecond))
}

func installScenarios() []scenario {
	return []scenario{
		{"installed: a rolling update of the DaemonSet under load: no failed request, connections kept", installed, rollDaemonSet},
		// Last: it takes the network away.
		{"installed: helm uninstall leaves nothing on the nodes", installed, uninstall},
	}
}

// rollDaemonSet restarts every node's daemon through the DaemonSet's
// rolling update, under a loop of new connections and one of held ones.
func rollDaemonSet(t *testing.T, e *env) {
	ctx := context.Background()
	addr := e.clusterIP(t, "echo")
	held := e.startLoop(t, "loop-ds-held", e.nodes[0], "--protocol", "tcp", "--persistent", "--connections", "3", "--interval", "100ms", addr+":7000")
	fresh := e.startLoop(t, "loop-ds-fresh", e.nodes[1], "--interval", "50ms", addr+":80")
	ds, err := e.cs.AppsV1().DaemonSets(releaseNS).Get(ctx, daemonSetID, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := e.c.Kubectl("-n", releaseNS, "rollout", "restart", "daemonset/"+daemonSetID); err != nil {
		t.Fatalf("rollout restart: %v %s", err, out)
	}
	if out, err := e.c.Kubectl("-n", releaseNS, "rollout", "status", "daemonset/"+daemonSetID, "--timeout", "4m"); err != nil {
		t.Fatalf("rollout status: %v %s", err, out)
	}
	after, err := e.cs.AppsV1().DaemonSets(releaseNS).Get(ctx, daemonSetID, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.Status.ObservedGeneration <= ds.Status.ObservedGeneration || after.Status.UpdatedNumberScheduled != int32(len(e.nodes)) {
		t.Fatalf("the DaemonSet did not roll every node: %+v", after.Status)
	}
	time.Sleep(3 * time.Second)
	r := held.noFailures(t)
	if len(r.connected) != 3 {
		t.Fatalf("the held connections were reopened: %v", r.connected)
	}
	fresh.noFailures(t)
}

// uninstall removes the release and checks every node for what Capstan
// installed: BPF pins and attachments, CNI configuration and plugins,
// routes, the VXLAN device, iptables chains, pod records.
func uninstall(t *testing.T, e *env) {
	ctx := context.Background()
	if out, err := e.helm(t, "uninstall", daemonSetID, "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	if err := eventually(time.Minute, func() error {
		pods, err := e.cs.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=capstan"})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d capstan pods left", len(pods.Items))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, node := range e.nodes {
		if err := eventually(30*time.Second, func() error { return e.leftovers(node) }); err != nil {
			t.Error(err)
		}
	}
}

// leftovers describes what Capstan left on node, nil if nothing.
func (e *env) leftovers(node string) error {
	var left []string
	files := []string{
		filepath.Join("/sys/fs/bpf/capstan", node),
		filepath.Join(cluster.CNIConfDir(e.cfg.DataDir, node), "10-capstan.conflist"),
		filepath.Join(cluster.CNIBinDir(e.cfg.DataDir, node), "capstan-cni"),
		filepath.Join(cluster.CNIBinDir(e.cfg.DataDir, node), "capstan-portmap"),
		filepath.Join(e.cfg.RunDir, node, "endpoints"),
		filepath.Join(e.cfg.RunDir, node, "ipam"),
	}
	for _, f := range files {
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
	for _, c := range checks {
		out, err := e.inNode(node, c.args...)
		if err != nil {
			return fmt.Errorf("%s on %s: %v %s", strings.Join(c.args, " "), node, err, out)
		}
		if c.bad(out) {
			left = append(left, c.what+":\n"+out)
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
