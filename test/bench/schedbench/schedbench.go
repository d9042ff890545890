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
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
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
	// Created is from the first create to the last create's response;
	// Bound from the first create to the watch seeing the last binding.
	Created, Bound time.Duration
	// PerNode counts the pods bound to each node, all nodes included.
	PerNode    map[string]int
	Server     podbench.Memory
	ServerArgs []string
	// CPU time the server and the load generator used while the pods were
	// created and bound.
	ServerCPU, ClientCPU time.Duration
}

// PodsPerSecond is the binding rate.
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

// measure writes nodes and pods and waits for every binding; server is the
// server's pid.
func measure(ctx context.Context, client kubernetes.Interface, server int, cfg Config, log *slog.Logger) (*Result, error) {
	if err := waitForServiceAccount(ctx, client); err != nil {
		return nil, err
	}
	names, err := createNodes(ctx, client, cfg)
	if err != nil {
		return nil, err
	}
	log.Info("nodes written", "nodes", len(names))
	w, err := watchPods(ctx, client)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	// A failed create ends the watch at once rather than at its timeout.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	created := make(chan time.Time, 1)
	cpu0, err := podbench.CPUTime(server)
	if err != nil {
		return nil, fmt.Errorf("server CPU: %w", err)
	}
	self0, start := podbench.SelfCPUTime(), time.Now()
	go func() {
		if err := createPods(wctx, client, cfg); err != nil {
			cancel(err)
		}
		created <- time.Now()
	}()
	perNode, last, err := watchBindings(wctx, w, cfg, log)
	if err != nil {
		return nil, err
	}
	createdAt := <-created
	cpu1, err := podbench.CPUTime(server)
	if err != nil {
		return nil, fmt.Errorf("server CPU: %w", err)
	}
	for _, n := range names {
		perNode[n] += 0 // nodes without pods count in the spread
	}
	return &Result{
		Nodes: cfg.Nodes, Pods: cfg.Pods, Created: createdAt.Sub(start), Bound: last.Sub(start), PerNode: perNode,
		ServerCPU: cpu1 - cpu0, ClientCPU: podbench.SelfCPUTime() - self0,
	}, nil
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
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Pods(namespace).Watch(ctx, opts)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	return w, nil
}

// waitForServiceAccount waits for the namespace's default ServiceAccount,
// without which the ServiceAccount admission plugin refuses pods.
func waitForServiceAccount(ctx context.Context, client kubernetes.Interface) error {
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("service account %s/default: %w", namespace, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// createNodes writes the simulated nodes, Ready and untainted.
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
		// Ready; the taint is on create only, so an update removes it.
		untaint := []byte(`{"spec":{"taints":null}}`)
		if _, err := client.CoreV1().Nodes().Patch(ctx, names[i], types.MergePatchType, untaint, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("untaint node %s: %w", names[i], err)
		}
		return nil
	})
	return names, err
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
// returns the count per node and when the last binding was seen.
func watchBindings(ctx context.Context, w watch.Interface, cfg Config, log *slog.Logger) (map[string]int, time.Time, error) {
	bound := map[string]string{}
	perNode := map[string]int{}
	timeout := time.After(cfg.Timeout)
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	var last time.Time
	for len(bound) < cfg.Pods {
		select {
		case <-ctx.Done():
			return nil, last, context.Cause(ctx)
		case <-timeout:
			return nil, last, fmt.Errorf("%d of %d pods bound after %v", len(bound), cfg.Pods, cfg.Timeout)
		case <-progress.C:
			log.Info("binding", "bound", len(bound), "pods", cfg.Pods)
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, last, fmt.Errorf("pod watch ended after %d bound", len(bound))
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod || ev.Type == watch.Deleted || p.Spec.NodeName == "" || bound[p.Name] != "" {
				continue
			}
			bound[p.Name] = p.Spec.NodeName
			perNode[p.Spec.NodeName]++
			last = time.Now()
		}
	}
	return perNode, last, nil
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
	fmt.Fprintf(w, "  pods created in        %10s   (%.0f creates/s)\n", r.Created.Round(time.Millisecond), float64(r.Pods)/r.Created.Seconds())
	fmt.Fprintf(w, "  all bound after        %10s\n", r.Bound.Round(time.Millisecond))
	fmt.Fprintf(w, "  pods bound/s           %10.0f\n", r.PodsPerSecond())
	fmt.Fprintf(w, "  pods per node          min %d, max %d (%d of %d nodes used)\n", lo, hi, used, r.Nodes)
	fmt.Fprintf(w, "  CPU while binding      server %.1fs, load generator %.1fs, over %.1fs on %d CPUs\n",
		r.ServerCPU.Seconds(), r.ClientCPU.Seconds(), r.Bound.Seconds(), runtime.NumCPU())
	fmt.Fprintf(w, "  server RSS after       %14s   (peak %s)\n", podbench.MiB(r.Server.RSS), podbench.MiB(r.Server.Peak))
	ok := "MISSED"
	if r.PodsPerSecond() >= Target {
		ok = "met"
	}
	fmt.Fprintf(w, "  target: pods bound/s >= %d (%s)\n", Target, ok)
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
