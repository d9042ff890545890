//go:build e2e

package e2e_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-net/capstan/test/clustertest"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

// installed: the clusters whose network is Capstan's chart, installed on a
// cluster brought up with none, as users install Cilium or Calico.
func installed(cc clusterCase) bool { return cc.install != "" }

// notInstalled: the scenarios that restart or reconfigure `capstan agent`'s
// own dataplane.
func notInstalled(cc clusterCase) bool { return cc.install == "" }

const (
	releaseNS   = clustertest.ChartNamespace
	daemonSetID = "capstan"
)

// installBin is where make left helm and the node image.
func installBin(t *testing.T) string {
	return makeBin(t, "make helm node-image", "helm", filepath.Join("images", "capstan.tar"))
}

// chart is Capstan's chart as make left helm.
func (e *env) chart(t *testing.T) clustertest.Chart {
	root, err := testbin.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return clustertest.Chart{Helm: filepath.Join(installBin(t), "helm"), Root: root, Release: daemonSetID}
}

// install puts Capstan on the cluster with the chart and waits for every
// node to turn Ready, which it does only once the dataplane is attached.
func (e *env) install(t *testing.T) {
	start := time.Now()
	if err := e.chart(t).Install(e.c); err != nil {
		t.Fatal(err)
	}
	t.Logf("helm install: every node Ready %v after it started", time.Since(start).Round(100*time.Millisecond))
}

func installScenarios() []scenario {
	return []scenario{
		{"installed: a rolling update of the DaemonSet under load: no failed request, connections kept", installed, rollDaemonSet},
		// These take the network away.
		{"installed: helm uninstall leaves nothing on the nodes", installed, uninstall},
		{"installed: kubectl apply of the rendered manifest, then kubectl delete leaves nothing", installed, applyManifest},
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
// installed.
func uninstall(t *testing.T, e *env) {
	if err := e.chart(t).Uninstall(e.c); err != nil {
		t.Fatal(err)
	}
	for _, node := range e.nodes {
		if err := eventually(30*time.Second, func() error { return e.c.Leftovers(node) }); err != nil {
			t.Error(err)
		}
	}
}

// applyManifest installs Capstan with kubectl from the chart rendered for
// this cluster (deploy/kubernetes/capstan.yaml is the same with the
// defaults' host paths), checks Services work again, and deletes it.
func applyManifest(t *testing.T, e *env) {
	ch := e.chart(t)
	manifest, err := ch.Render(e.c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "capstan.yaml")
	if err := os.WriteFile(path, manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := e.c.Kubectl("apply", "-f", path); err != nil {
		t.Fatalf("kubectl apply: %v %s", err, out)
	}
	if out, err := e.c.Kubectl("-n", releaseNS, "rollout", "status", "daemonset/"+daemonSetID, "--timeout", "3m"); err != nil {
		t.Fatalf("rollout status: %v %s", err, out)
	}
	if err := e.c.WaitNodesReady(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	// Pods that ran under the removed network do not come back to it (as
	// with Cilium or Calico): new ones do.
	if out, err := e.kubectl("rollout", "restart", "deployment/echo"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := e.kubectl("rollout", "status", "deployment/echo", "--timeout", "2m"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	e.clusterIPFromNodes(t, 30*time.Second)
	if out, err := e.c.Kubectl("delete", "-f", path, "--wait"); err != nil {
		t.Fatalf("kubectl delete: %v %s", err, out)
	}
	if err := ch.Gone(e.c); err != nil {
		t.Fatal(err)
	}
	for _, node := range e.nodes {
		if err := eventually(30*time.Second, func() error { return e.c.Leftovers(node) }); err != nil {
			t.Error(err)
		}
	}
}
