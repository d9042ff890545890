// Package schedbench measures the upstream kube-scheduler that `capstan
// server` runs: how many pods per second it binds to simulated nodes.
package schedbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/capstan-net/capstan/control/server/servertest"
	"github.com/capstan-net/capstan/test/bench/podbench"
)

// Target is the issue's: pods bound per second on 100 simulated nodes.
const Target = 300

// namespace holds the pods; its default ServiceAccount exists early.
const namespace = "default"

// Config sizes a run.
type Config struct {
	// Binary is the capstan binary the server runs from.
	Binary      string
	Nodes, Pods int
	// Workers are concurrent creating clients.
	Workers int
	// DataDir for the server; empty uses a temporary directory.
	DataDir string
	// ServerArgs are extra `capstan server` flags (component tuning).
	ServerArgs []string
	// Timeout bounds the wait for the last binding.
	Timeout time.Duration
}

// Result is what a run measured.
type Result struct {
	Nodes, Pods int
	// Created is from the first create to the last create's response.
	// Bound is from the moment the nodes are released (every pod waiting,
	// marked unschedulable) to the watch seeing the last binding: the
	// scheduler working off a backlog, as upstream's scheduler_perf measures
	// throughput, without the creates competing for the API server.
	Created, Bound time.Duration
	// PerNode counts the pods bound to each node, all nodes included.
	PerNode    map[string]int
	Server     podbench.Memory
	ServerArgs []string
	// CPU time the server and the load generator used while the pods were
	// created and bound.
	ServerCPU, ClientCPU time.Duration
}

// PodsPerSecond is the binding rate from the backlog.
func (r *Result) PodsPerSecond() float64 { return float64(r.Pods) / r.Bound.Seconds() }

// Run starts a server, writes the nodes, then the pods, and times the
// server's scheduler binding them all.
func Run(ctx context.Context, cfg Config, log *slog.Logger) (*Result, error) {
	if cfg.Nodes <= 0 || cfg.Pods <= 0 || cfg.Workers <= 0 {
		return nil, fmt.Errorf("nodes, pods and workers must be positive")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Minute
	}
	dir := cfg.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "capstan-schedbench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	// The node lifecycle controller is off: the simulated nodes renew no
	// Lease, and it would taint them unreachable.
	args := append([]string{"--kube-controller-manager-arg", "controllers=*,-node-lifecycle-controller"}, cfg.ServerArgs...)
	srv, err := servertest.Start(ctx, servertest.Options{Binary: cfg.Binary, DataDir: dir, Args: args})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	defer srv.Stop()
	log.Info("server ready", "pid", srv.Pid(), "log", srv.Log)
	client, err := newClient(srv.Config)
	if err != nil {
		return nil, err
	}
	res, err := measure(ctx, client, srv.Pid(), cfg, log)
	if err != nil {
		return nil, err
	}
	if res.Server, err = podbench.ReadMemory(srv.Pid()); err != nil {
		return nil, fmt.Errorf("server memory: %w", err)
	}
	res.ServerArgs = args
	return res, nil
}

// newClient is the load generator's: protobuf, as the components speak, and
// no client-side rate limit, so the server's and the scheduler's limits show.
func newClient(base *rest.Config) (kubernetes.Interface, error) {
	rc := rest.CopyConfig(base)
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = rc.ContentType
	return kubernetes.NewForConfig(rc)
}

// measure writes held nodes (a NoSchedule taint) and the pods, waits until
// the scheduler has found every pod unschedulable, then releases the nodes
// and times the bindings; server is the server's pid.
func measure(ctx context.Context, client kubernetes.Interface, server int, cfg Config, log *slog.Logger) (*Result, error) {
	names, err := createNodes(ctx, client, cfg)
	if err != nil {
		return nil, err
	}
	log.Info("nodes written, held", "nodes", len(names))
	start := time.Now()
	if err := createPods(ctx, client, cfg); err != nil {
		return nil, err
	}
	res := &Result{Nodes: cfg.Nodes, Pods: cfg.Pods, Created: time.Since(start)}
	if err := waitUnschedulable(ctx, client, cfg, log); err != nil {
		return nil, err
	}
	w, err := watchPods(ctx, client)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	cpu0, err := podbench.CPUTime(server)
	if err != nil {
		return nil, fmt.Errorf("server CPU: %w", err)
	}
	self0, released := podbench.SelfCPUTime(), time.Now()
	if err := releaseNodes(ctx, client, cfg, names); err != nil {
		return nil, err
	}
	perNode, times, err := watchBindings(ctx, w, cfg, log)
	if err != nil {
		return nil, err
	}
	cpu1, err := podbench.CPUTime(server)
	if err != nil {
		return nil, fmt.Errorf("server CPU: %w", err)
	}
	for _, n := range names {
		perNode[n] += 0 // nodes without pods count in the spread
	}
	res.Bound, res.PerNode = times[len(times)-1].Sub(released), perNode
	res.ServerCPU, res.ClientCPU = cpu1-cpu0, podbench.SelfCPUTime()-self0
	return res, nil
}

// waitUnschedulable waits until the scheduler has tried every pod and
// marked it unschedulable (the nodes are held).
func waitUnschedulable(ctx context.Context, client kubernetes.Interface, cfg Config, log *slog.Logger) error {
	deadline := time.Now().Add(cfg.Timeout)
	for {
		list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return fmt.Errorf("list pods: %w", err)
		}
		waiting := 0
		for _, p := range list.Items {
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
					waiting++
				}
			}
		}
		if waiting == cfg.Pods {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d pods marked unschedulable after %v", waiting, cfg.Pods, cfg.Timeout)
		}
		log.Info("waiting for the scheduler to try every pod", "unschedulable", waiting, "pods", cfg.Pods)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// watchPods watches the namespace's pods from now on. The API server ends
// a watch that falls behind (a loaded 2-core machine does); as an informer
// would, this one resumes where it was.
func watchPods(ctx context.Context, client kubernetes.Interface) (watch.Interface, error) {
	// From the watch cache (RV "0"): a watch from a quorum list's newer
	// revision waits a second for the cache to catch up ("Too large
	// resource version").
	list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	w, err := podbench.WatchPods(ctx, client, namespace, list.ResourceVersion, nil)
	if err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	return w, nil
}

// holdTaint keeps pods off the simulated nodes until they are released.
const holdTaint = `{"spec":{"taints":[{"key":"schedbench.capstan.io/hold","effect":"NoSchedule"}]}}`

// createNodes writes the simulated nodes, Ready and held.
func createNodes(ctx context.Context, client kubernetes.Interface, cfg Config) ([]string, error) {
	names := make([]string, cfg.Nodes)
	for i := range names {
		names[i] = fmt.Sprintf("sim-node-%04d", i)
	}
	err := parallel(ctx, cfg.Workers, len(names), func(i int) error {
		if _, err := client.CoreV1().Nodes().Create(ctx, node(names[i]), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s: %w", names[i], err)
		}
		// The TaintNodesByCondition admission plugin taints a new node
		// not-ready until the node lifecycle controller (off here) sees it
		// Ready; the taint is on create only, so an update replaces it.
		if _, err := client.CoreV1().Nodes().Patch(ctx, names[i], types.MergePatchType, []byte(holdTaint), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("hold node %s: %w", names[i], err)
		}
		return nil
	})
	return names, err
}

// releaseNodes removes the hold: the node updates send the scheduler's
// unschedulable pods back to its active queue.
func releaseNodes(ctx context.Context, client kubernetes.Interface, cfg Config, names []string) error {
	return parallel(ctx, cfg.Workers, len(names), func(i int) error {
		release := []byte(`{"spec":{"taints":null}}`)
		if _, err := client.CoreV1().Nodes().Patch(ctx, names[i], types.MergePatchType, release, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("release node %s: %w", names[i], err)
		}
		return nil
	})
}

// node is a simulated node: 8 cpu, 16 GiB, 110 pods, as the former
// benchmark's. Nodes may be created with their status.
func node(name string) *corev1.Node {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	now := metav1.Now()
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelHostname: name, corev1.LabelOSStable: "linux", corev1.LabelArchStable: "amd64",
		}},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			Phase:       corev1.NodeRunning,
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: now, LastTransitionTime: now,
			}},
		},
	}
}

// createPods writes the pending pods from cfg.Workers clients.
func createPods(ctx context.Context, client kubernetes.Interface, cfg Config) error {
	return parallel(ctx, cfg.Workers, cfg.Pods, func(i int) error {
		name := fmt.Sprintf("sched-%05d", i)
		if _, err := client.CoreV1().Pods(namespace).Create(ctx, pod(name), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s: %w", name, err)
		}
		return nil
	})
}

// pod is a pending pod of 100m cpu and 64 MiB: 5,000 of them fit on 100
// nodes whichever way the scheduler spreads them.
func pod(name string) *corev1.Pod {
	req := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("100m"),
		corev1.ResourceMemory: resource.MustParse("64Mi"),
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "schedbench"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "c", Image: "capstan.local/echo:1.0", Resources: corev1.ResourceRequirements{Requests: req},
		}}},
	}
}

// parallel calls fn(0..n-1) from workers goroutines and returns the first
// error.
func parallel(ctx context.Context, workers, n int, fn func(int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// watchBindings follows the pods until all cfg.Pods have a node, and
// returns the count per node and when each binding was seen, in order.
func watchBindings(ctx context.Context, w watch.Interface, cfg Config, log *slog.Logger) (map[string]int, []time.Time, error) {
	bound := map[string]bool{}
	perNode := map[string]int{}
	times := make([]time.Time, 0, cfg.Pods)
	timeout := time.After(cfg.Timeout)
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	for len(times) < cfg.Pods {
		select {
		case <-ctx.Done():
			return nil, nil, context.Cause(ctx)
		case <-timeout:
			return nil, nil, fmt.Errorf("%d of %d pods bound after %v", len(times), cfg.Pods, cfg.Timeout)
		case <-progress.C:
			log.Info("binding", "bound", len(times), "pods", cfg.Pods)
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, nil, fmt.Errorf("pod watch ended after %d bound", len(times))
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod || ev.Type == watch.Deleted || p.Spec.NodeName == "" || bound[p.Name] {
				continue
			}
			bound[p.Name] = true
			perNode[p.Spec.NodeName]++
			times = append(times, time.Now())
		}
	}
	return perNode, times, nil
}

// Print writes the figures.
func (r *Result) Print(w io.Writer) {
	lo, hi := spread(r.PerNode)
	used := 0
	for _, n := range r.PerNode {
		if n > 0 {
			used++
		}
	}
	fmt.Fprintf(w, "scheduler benchmark: %d pods (100m cpu, 64Mi) on %d simulated nodes (8 cpu, 16Gi, 110 pods), upstream kube-scheduler in capstan server\n", r.Pods, r.Nodes)
	fmt.Fprintf(w, "  server flags: %s\n", strings.Join(r.ServerArgs, " "))
	fmt.Fprintf(w, "  pods created in        %10s   (%.0f creates/s), on held nodes: all unschedulable\n", r.Created.Round(time.Millisecond), float64(r.Pods)/r.Created.Seconds())
	fmt.Fprintf(w, "  all bound after        %10s   (from releasing the nodes)\n", r.Bound.Round(time.Millisecond))
	fmt.Fprintf(w, "  pods bound/s           %10.0f\n", r.PodsPerSecond())
	fmt.Fprintf(w, "  pods per node          min %d, max %d (%d of %d nodes used)\n", lo, hi, used, r.Nodes)
	fmt.Fprintf(w, "  CPU while binding      server %.1fs, load generator %.1fs, over %.1fs on %d CPUs\n",
		r.ServerCPU.Seconds(), r.ClientCPU.Seconds(), r.Bound.Seconds(), runtime.NumCPU())
	fmt.Fprintf(w, "  server RSS after       %14s   (peak %s)\n", podbench.MiB(r.Server.RSS), podbench.MiB(r.Server.Peak))
	fmt.Fprintf(w, "  target: pods bound/s >= %d (%s)\n", Target, podbench.Verdict(r.PodsPerSecond() >= Target))
}

// spread is the fewest and most pods on one node.
func spread(perNode map[string]int) (lo, hi int) {
	first := true
	for _, n := range perNode {
		if first || n < lo {
			lo = n
		}
		if first || n > hi {
			hi = n
		}
		first = false
	}
	return lo, hi
}
