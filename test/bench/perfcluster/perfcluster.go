// Package perfcluster is what the cluster benchmarks (`capstan bench services`, `capstan bench
// policy`) share: their common options, a local cluster brought up around a measurement and
// taken down after it, pods running capstan-echo, probes from nodes, pods and namespaces, and
// `capstan-echo perf` runs with their results.
package perfcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/capstan-net/capstan/cluster"
)

const (
	// Image is what every benchmark pod runs: capstan-echo.
	Image = "capstan.local/echo:1.0"
	// PerfPort is capstan-echo serve's perf port.
	PerfPort = 5201
)

// Options are what every cluster benchmark takes. Binary, EchoBinary and Images are required.
type Options struct {
	Binary          string        // the capstan binary
	EchoBinary      string        // capstan-echo built for the host: probes and outside clients
	Images          []string      // image archives with capstan.local/echo:1.0
	Duration        time.Duration // per measurement
	Connections     int           // per measurement (stream, rr, crr workers)
	OutDir          string        // bench-results
	DataDir, RunDir string
	Log             *slog.Logger
	Out             io.Writer // the table
}

// SetDefaults checks o and fills in what is unset; errors start with "bench <bench>: ".
func (o *Options) SetDefaults(bench string) error {
	if o.Binary == "" || o.EchoBinary == "" || len(o.Images) == 0 {
		return fmt.Errorf("bench %s: the capstan binary, a host capstan-echo and the test images are required (make bench builds them)", bench)
	}
	for _, f := range append([]string{o.Binary, o.EchoBinary}, o.Images...) {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("bench %s: %w", bench, err)
		}
	}
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
	}
	if o.Duration < 500*time.Millisecond || o.Duration > 10*time.Minute {
		return fmt.Errorf("bench %s: duration %s: want 500ms to 10m", bench, o.Duration)
	}
	if o.Connections == 0 {
		o.Connections = 1
	}
	if o.Connections < 1 || o.Connections > 256 {
		return fmt.Errorf("bench %s: %d connections: want 1 to 256", bench, o.Connections)
	}
	if o.OutDir == "" {
		o.OutDir = "bench-results"
	}
	if o.DataDir == "" {
		dir, err := os.MkdirTemp("", "capstan-bench-")
		if err != nil {
			return err
		}
		o.DataDir = dir
	}
	if o.RunDir == "" {
		o.RunDir = filepath.Join(o.DataDir, "run")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return nil
}

// Cluster is a running local cluster with a client for it.
type Cluster struct {
	Config     cluster.Config
	Nodes      []string
	NodeIP     map[string]string // node -> its first InternalIP
	Kubeconfig string
	Client     kubernetes.Interface
	EchoBinary string
}

// With brings the cluster of cfg up, waits for its nodes to be Ready, calls f, and takes the
// cluster down (as `capstan down` does) whatever happened.
func With(ctx context.Context, cfg cluster.Config, echoBinary string, f func(*Cluster) error) (err error) {
	defer func() {
		// Down removes the logs with the rest; a failed run keeps them for a look.
		if err != nil {
			if dir, kerr := keepLogs(filepath.Join(cfg.DataDir, "cluster", "logs")); kerr == nil {
				err = fmt.Errorf("%w (cluster logs kept in %s)", err, dir)
			}
		}
		if derr := cluster.Down(context.Background(), cfg); derr != nil && err == nil {
			err = fmt.Errorf("capstan down: %w", derr)
		}
	}()
	st, err := cluster.Up(ctx, cfg)
	if err != nil {
		return err
	}
	c := &Cluster{Config: cfg, Nodes: st.Nodes, NodeIP: map[string]string{}, Kubeconfig: cluster.Kubeconfig(cfg.DataDir), EchoBinary: echoBinary}
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 2000, 4000
	if c.Client, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	if err := c.waitNodes(ctx); err != nil {
		return err
	}
	return f(c)
}

// keepLogs copies the cluster's log files to a new temporary directory and returns it.
func keepLogs(src string) (string, error) {
	ents, err := os.ReadDir(src)
	if err != nil {
		return "", err
	}
	dst, err := os.MkdirTemp("", "capstan-bench-logs-")
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return "", err
		}
	}
	return dst, nil
}

func (c *Cluster) waitNodes(ctx context.Context) error {
	return Poll(ctx, 2*time.Minute, func() error {
		nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
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
				if a.Type == corev1.NodeInternalIP && c.NodeIP[n.Name] == "" {
					c.NodeIP[n.Name] = a.Address
				}
			}
		}
		if ready < len(c.Nodes) || c.NodeIP[c.Nodes[0]] == "" {
			return fmt.Errorf("%d of %d nodes ready", ready, len(c.Nodes))
		}
		return nil
	})
}

// CreateNamespaces creates namespaces.
func (c *Cluster) CreateNamespaces(ctx context.Context, names ...string) error {
	for _, ns := range names {
		if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// Pod is a benchmark pod: capstan-echo with Args, on Node.
type Pod struct {
	Name, Node string
	Labels     map[string]string
	Args       []string
}

// Running is a pod that runs.
type Running struct {
	Node, IP, UID string
}

// StartPods creates pods in ns and waits until each runs with an address.
func (c *Cluster) StartPods(ctx context.Context, ns string, pods []Pod) (map[string]Running, error) {
	for _, p := range pods {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Labels: p.Labels}, Spec: corev1.PodSpec{
			NodeName: p.Node, TerminationGracePeriodSeconds: ptr.To(int64(1)),
			Containers: []corev1.Container{{Name: "c", Image: Image, Args: p.Args}},
		}}
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	running := map[string]Running{}
	err := Poll(ctx, 2*time.Minute, func() error {
		for _, p := range pods {
			got, err := c.Client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got.Status.Phase != corev1.PodRunning || got.Status.PodIP == "" {
				return fmt.Errorf("pod %s is %s", p.Name, got.Status.Phase)
			}
			running[p.Name] = Running{Node: got.Spec.NodeName, IP: got.Status.PodIP, UID: string(got.UID)}
		}
		return nil
	})
	return running, err
}

// Poll calls f every 200 ms until it returns nil, at most for timeout; the error is f's last.
func Poll(ctx context.Context, timeout time.Duration, f func() error) error {
	return PollEvery(ctx, 200*time.Millisecond, timeout, f)
}

// PollEvery is Poll with another interval.
func PollEvery(ctx context.Context, interval, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// RunInfo is what every benchmark report starts with (embedded, so its fields are the
// report's own in JSON).
type RunInfo struct {
	Started     time.Time `json:"started"`
	Machine     Machine   `json:"machine"`
	Duration    string    `json:"measurementDuration"`
	Connections int       `json:"connections"`
}

// NewRunInfo describes a run starting now with o.
func (o *Options) NewRunInfo() RunInfo {
	return RunInfo{Started: time.Now().UTC(), Machine: ReadMachine(), Duration: o.Duration.String(), Connections: o.Connections}
}

func (r RunInfo) String() string {
	return fmt.Sprintf("%s; %s per run, %d connection(s)", r.Machine, r.Duration, r.Connections)
}

// Machine describes where the figures come from.
type Machine struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	Memory string `json:"memory"`
}

// ReadMachine describes this machine.
func ReadMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		first, _, _ := strings.Cut(string(data), "\n")
		m.Memory = strings.Join(strings.Fields(strings.TrimPrefix(first, "MemTotal:")), " ")
	}
	return m
}

func (m Machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), kernel %s, %s", m.CPUs, m.CPU, m.Kernel, m.Memory)
}

// WriteResults writes v as results.json in dir/<name>-<started, UTC>, and returns that
// directory (for the benchmark's other files).
func WriteResults(dir, name string, started time.Time, v any) (string, error) {
	dir = filepath.Join(dir, name+"-"+started.Format("20060102-150405"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "results.json"), data, 0o644)
}
