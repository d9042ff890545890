package podbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
)

// RSSConfig is a memory measurement of a `capstan up` cluster's server and
// one node, idle and with pods running.
type RSSConfig struct {
	// DataDir is the cluster's --data-dir: its processes' pid files are
	// under DataDir/cluster (server.pid, <node>.pid).
	DataDir string
	Node    string // empty: the first Ready node
	Pods    int
	Image   string
	Rate    float64 // pods created per second (0: all at once)
	// Settle is the wait before each reading, so that start-up garbage
	// has been collected and the processes are idle.
	Settle  time.Duration
	Timeout time.Duration
}

// Sample is the node's and the server's memory with some pods running.
type Sample struct {
	Pods                      int
	Server, Agent, Containerd Memory
	// Shims are the node's containerd-shim processes (one per pod sandbox),
	// ShimRSS and ShimPSS their totals (the shims share their binary's
	// pages, which RSS counts in each).
	Shims            int
	ShimRSS, ShimPSS int64
}

// RSSResult holds the samples.
type RSSResult struct {
	Node    string
	Samples []Sample
	// Start is the start-up latency of the pods of the second sample.
	Start *Result
}

// RunRSS reads the processes' memory with no benchmark pods, then with
// cfg.Pods pods running on the node (started and deleted as Run does).
func RunRSS(ctx context.Context, cs kubernetes.Interface, cfg RSSConfig, log *slog.Logger) (*RSSResult, error) {
	if cfg.Pods <= 0 {
		return nil, fmt.Errorf("--pods must be positive")
	}
	node, err := pickNode(ctx, cs, cfg.Node)
	if err != nil {
		return nil, err
	}
	res := &RSSResult{Node: node}
	take := func(ctx context.Context, pods int) error {
		log.Info("settling before reading memory", "pods", pods, "wait", cfg.Settle)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.Settle):
		}
		s, err := sample(cfg.DataDir, node, pods)
		if err != nil {
			return err
		}
		res.Samples = append(res.Samples, s)
		return nil
	}
	if err := take(ctx, 0); err != nil {
		return nil, err
	}
	res.Start, err = Run(ctx, cs, Config{
		Pods: cfg.Pods, Node: node, Image: cfg.Image, Parallel: 10, Rate: cfg.Rate, Timeout: cfg.Timeout,
		Running: func(ctx context.Context) error { return take(ctx, cfg.Pods) },
	}, log)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// sample reads the memory of the server, the node's agent, the agent's
// containerd and the node's shims.
func sample(dataDir, node string, pods int) (Sample, error) {
	s := Sample{Pods: pods}
	server, err := pidFile(dataDir, "server")
	if err != nil {
		return s, err
	}
	agent, err := pidFile(dataDir, node)
	if err != nil {
		return s, err
	}
	if s.Server, err = ReadMemory(server); err != nil {
		return s, err
	}
	if s.Agent, err = ReadMemory(agent); err != nil {
		return s, err
	}
	ctrd := childNamed(agent, "containerd")
	if ctrd == 0 {
		return s, fmt.Errorf("no containerd child of the agent (pid %d)", agent)
	}
	if s.Containerd, err = ReadMemory(ctrd); err != nil {
		return s, err
	}
	for _, pid := range shims(ctrd) {
		if m, err := ReadMemory(pid); err == nil {
			s.Shims++
			s.ShimRSS += m.RSS
			s.ShimPSS += m.PSS
		}
	}
	return s, nil
}

// pidFile reads the pid of a cluster process `capstan up` started.
func pidFile(dataDir, name string) (int, error) {
	path := filepath.Join(dataDir, "cluster", name+".pid")
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pid of %s: %w", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// childNamed is the first child of pid with the command name, or 0.
func childNamed(pid int, name string) int {
	for _, c := range children(pid) {
		if comm(c) == name {
			return c
		}
	}
	return 0
}

// shims are the containerd-shim processes in the cgroup of a containerd:
// they re-parent themselves to init, but stay in the cgroup they were
// started in, which tells one node's from another's.
func shims(containerd int) []int {
	cg := cgroup(containerd)
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && strings.HasPrefix(comm(pid), "containerd-shim") && cg != "" && cgroup(pid) == cg {
			out = append(out, pid)
		}
	}
	return out
}

// cgroup is a process's cgroup v2 path.
func cgroup(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			return path
		}
	}
	return ""
}

// Print writes a table of the samples, then the pods' start-up figures.
func (r *RSSResult) Print(w io.Writer) {
	fmt.Fprintf(w, "memory (VmRSS) of the server and of node %s's processes\n", r.Node)
	row := "  %-5s %-11s %-11s %-11s %-6s %-11s %-11s %s\n"
	fmt.Fprintf(w, row, "PODS", "SERVER", "AGENT", "CONTAINERD", "SHIMS", "SHIMS RSS", "SHIMS PSS", "NODE (PSS)")
	for _, s := range r.Samples {
		node := s.Agent.PSS + s.Containerd.PSS + s.ShimPSS
		fmt.Fprintf(w, row, strconv.Itoa(s.Pods), MiB(s.Server.RSS), MiB(s.Agent.RSS), MiB(s.Containerd.RSS),
			strconv.Itoa(s.Shims), MiB(s.ShimRSS), MiB(s.ShimPSS), MiB(node))
	}
	if n := len(r.Samples); n > 0 {
		s := r.Samples[n-1]
		fmt.Fprintf(w, "  peaks so far: server %s, agent %s, containerd %s\n", MiB(s.Server.Peak), MiB(s.Agent.Peak), MiB(s.Containerd.Peak))
	}
	fmt.Fprintf(w, "  (agent: kubelet and dataplane in one process; shims: one containerd-shim-runc-v2 per pod;\n")
	fmt.Fprintf(w, "   NODE: PSS of agent + containerd + shims, the pods' own processes not included)\n")
	if r.Start != nil {
		fmt.Fprintf(w, "the %d pods: all Running %v after the first create; ", len(r.Start.Latencies), r.Start.Wall.Round(time.Millisecond))
		r.Start.printLatency(w)
	}
}
