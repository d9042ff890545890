// Package clustertest is what the whole-cluster suites (test/e2e,
// test/netpol) share: building the binaries and test images once, bringing a
// local cluster up (`capstan up`) for a test and down after it, or connecting
// to one that already runs, and small helpers to wait and to report.
package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/images/imagebuild"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

// Tools are what a suite brings clusters up with.
type Tools struct {
	Capstan string // capstan, built by the Makefile (what nodes run beside it)
	Echo    string // capstan-echo for the host: clients outside pods
	Images  string // the test images archive every agent imports
}

// Build checks that the suite can run here (root) and builds the tools into
// dir.
func Build(dir string) (*Tools, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("a whole-cluster suite needs root")
	}
	root, err := testbin.RepoRoot()
	if err != nil {
		return nil, err
	}
	capstan, err := testbin.Build(root, dir)
	if err != nil {
		return nil, err
	}
	echo := filepath.Join(dir, "capstan-echo")
	if out, err := exec.Command("go", "build", "-o", echo, filepath.Join(root, "test", "images", "echo")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build capstan-echo: %v\n%s", err, out)
	}
	images := filepath.Join(dir, "images.tar")
	wd, _ := os.Getwd()
	os.Chdir(root)
	err = imagebuild.WriteFile(context.Background(), imagebuild.Options{}, images)
	os.Chdir(wd)
	if err != nil {
		return nil, err
	}
	return &Tools{Capstan: capstan, Echo: echo, Images: images}, nil
}

// Cluster is a running cluster a suite talks to.
type Cluster struct {
	// Cfg is the local cluster's configuration; its Name is empty for a
	// cluster the suite did not bring up, which has no node-exec.
	Cfg        cluster.Config
	Rest       *rest.Config
	CS         kubernetes.Interface
	Kubeconfig string
	Capstan    string // the capstan binary, for kubectl; may be empty
	Nodes      []string
	NodeIPs    map[string]string // InternalIP by node
}

// Up brings cfg up, takes it down again when t ends, and waits for every
// node to be Ready.
func Up(t testing.TB, cfg cluster.Config) (*Cluster, error) {
	ctx := context.Background()
	t.Cleanup(func() {
		if err := cluster.Down(ctx, cfg); err != nil {
			t.Errorf("capstan down: %v", err)
		}
	})
	st, err := cluster.Up(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c, err := connect(cluster.Kubeconfig(cfg.DataDir))
	if err != nil {
		return nil, err
	}
	c.Cfg, c.Capstan, c.Nodes = cfg, cfg.Binary, st.Nodes
	if cfg.Network == "none" {
		// NotReady until the suite installs a network.
		return c, nil
	}
	return c, c.WaitNodesReady(2 * time.Minute)
}

// Existing connects to a running cluster through kubeconfig and waits until
// it has at least one node and all its nodes are Ready.
func Existing(kubeconfig string) (*Cluster, error) {
	c, err := connect(kubeconfig)
	if err != nil {
		return nil, err
	}
	if err := Eventually(2*time.Minute, func() error {
		nodes, err := c.CS.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(nodes.Items) == 0 {
			return errors.New("the cluster has no nodes")
		}
		c.Nodes = nil
		for _, n := range nodes.Items {
			c.Nodes = append(c.Nodes, n.Name)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return c, c.WaitNodesReady(2 * time.Minute)
}

func connect(kubeconfig string) (*Cluster, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Cluster{Rest: rc, CS: cs, Kubeconfig: kubeconfig, NodeIPs: map[string]string{}}, nil
}

// WaitNodesReady waits until all of c.Nodes are Ready, and records their
// InternalIPs.
func (c *Cluster) WaitNodesReady(timeout time.Duration) error {
	return Eventually(timeout, func() error {
		nodes, err := c.CS.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP {
					c.NodeIPs[n.Name] = a.Address
				}
			}
		}
		if ready < len(c.Nodes) {
			return fmt.Errorf("%d of %d nodes Ready", ready, len(c.Nodes))
		}
		return nil
	})
}

// Local reports whether the suite brought the cluster up, so that it has
// node-exec and agent logs.
func (c *Cluster) Local() bool { return c.Cfg.Name != "" }

// Kubectl runs `capstan kubectl ARGS` against the cluster and returns its
// combined output.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	if c.Capstan == "" {
		return "", errors.New("kubectl: no capstan binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Capstan, append([]string{"kubectl"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// InNode runs a command as a node's own process (`capstan node-exec`).
func (c *Cluster) InNode(node string, args ...string) (string, error) {
	if !c.Local() {
		return "", errors.New("node-exec: only on a cluster the suite brought up")
	}
	cmd, done, err := cluster.NodeCommand(c.Cfg, node, args...)
	if err != nil {
		return "", err
	}
	defer done()
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// LogAgents logs the tail of every agent's log, and its warnings, errors
// and pod sandbox events all along.
func (c *Cluster) LogAgents(t testing.TB) {
	if !c.Local() {
		return
	}
	for _, n := range c.Nodes {
		data, _ := os.ReadFile(filepath.Join(c.Cfg.DataDir, "cluster", "logs", n+".log"))
		t.Logf("%s agent log (tail):\n%s", n, TailLines(string(data), 15))
		// What the kubelet did to pods' sandboxes and containers, all along.
		var notable []string
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "sandbox") ||
				strings.Contains(l, "orphan") || strings.Contains(l, "deleted pod") || strings.Contains(l, "agent running") {
				notable = append(notable, l)
			}
		}
		t.Logf("%s agent log (warnings, sandboxes, restarts):\n%s", n, TailLines(strings.Join(notable, "\n"), 40))
	}
}

// Eventually calls f until it returns nil or timeout has passed, and
// returns its last error.
func Eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TailLines is the last n lines of s.
func TailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
