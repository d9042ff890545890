// Package podbench measures pod start-up latency on a real node: the time
// from a pod's create call to the agent reporting it Running, as
// upstream's pod start-up SLI (which excludes image pulls; our images are
// local).
package podbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// Config of a run.
type Config struct {
	Pods     int
	Node     string // empty: the first Ready node
	Image    string
	Parallel int // concurrent creates
	// Rate is pods created per second (0: all at once, limited only by
	// Parallel). Upstream's kubelet density tests pace creation the same way.
	Rate    float64
	Timeout time.Duration
	// Running, if set, is called once every pod runs, before they are
	// deleted (the RSS measurement reads the node's processes there).
	Running func(ctx context.Context) error
}

// Result holds the latencies, sorted.
type Result struct {
	Node      string
	Latencies []time.Duration
	Wall      time.Duration
	Rate      float64
}

func (r *Result) pct(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.Latencies))*p+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(r.Latencies) {
		i = len(r.Latencies) - 1
	}
	return r.Latencies[i]
}

// Print writes the figures.
func (r *Result) Print(w io.Writer) {
	rate := "all at once"
	if r.Rate > 0 {
		rate = fmt.Sprintf("created at %g/s", r.Rate)
	}
	fmt.Fprintf(w, "pods: %d on node %s, %s, all Running after %v\n", len(r.Latencies), r.Node, rate, r.Wall.Round(time.Millisecond))
	r.printLatency(w)
	fmt.Fprintf(w, "targets: p50 <= 1s (%s), p99 <= 3s (%s)\n", Verdict(r.pct(0.50) <= time.Second), Verdict(r.pct(0.99) <= 3*time.Second))
}

func (r *Result) printLatency(w io.Writer) {
	fmt.Fprintf(w, "create-to-Running latency: p50 %v  p90 %v  p99 %v  max %v\n",
		r.pct(0.50).Round(time.Millisecond), r.pct(0.90).Round(time.Millisecond),
		r.pct(0.99).Round(time.Millisecond), r.pct(1).Round(time.Millisecond))
}

// pickNode returns name if set, else the first Ready node.
func pickNode(ctx context.Context, cs kubernetes.Interface, name string) (string, error) {
	if name != "" {
		return name, nil
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range nodes.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return n.Name, nil
			}
		}
	}
	return "", fmt.Errorf("no Ready node: start a node (capstan agent) first")
}

// Run creates cfg.Pods pods pinned to one node in a fresh namespace,
// waits for all to run, then deletes the namespace.
func Run(ctx context.Context, cs kubernetes.Interface, cfg Config, log *slog.Logger) (*Result, error) {
	if cfg.Pods <= 0 {
		return nil, fmt.Errorf("--pods must be positive")
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 10
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Minute
	}
	node, err := pickNode(ctx, cs, cfg.Node)
	if err != nil {
		return nil, err
	}
	ns := fmt.Sprintf("bench-pods-%d", time.Now().Unix())
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		cs.CoreV1().Namespaces().Delete(dctx, ns, metav1.DeleteOptions{})
		for dctx.Err() == nil {
			if _, err := cs.CoreV1().Namespaces().Get(dctx, ns, metav1.GetOptions{}); err != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		log.Warn("namespace still terminating", "namespace", ns)
	}()

	w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	defer w.Stop()

	var mu sync.Mutex
	created := map[string]time.Time{}
	running := map[string]time.Duration{}
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		sem := make(chan struct{}, cfg.Parallel)
		var wg sync.WaitGroup
		var tick <-chan time.Time
		if cfg.Rate > 0 {
			t := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
			defer t.Stop()
			tick = t.C
		}
		for i := 0; i < cfg.Pods; i++ {
			if tick != nil && i > 0 {
				<-tick
			}
			name := fmt.Sprintf("bench-%03d", i)
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "podbench"}},
					Spec: corev1.PodSpec{
						NodeSelector:                  map[string]string{corev1.LabelHostname: node},
						TerminationGracePeriodSeconds: ptr.To(int64(1)),
						Containers: []corev1.Container{{
							Name: "pause", Image: cfg.Image, Args: []string{"pause"},
						}},
					},
				}
				t0 := time.Now()
				mu.Lock()
				created[name] = t0
				mu.Unlock()
				if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					select {
					case errc <- fmt.Errorf("create %s: %w", name, err):
					default:
					}
				}
			}()
		}
		wg.Wait()
	}()

	timeout := time.After(cfg.Timeout)
	for {
		mu.Lock()
		n := len(running)
		mu.Unlock()
		if n == cfg.Pods {
			break
		}
		select {
		case err := <-errc:
			return nil, err
		case <-timeout:
			return nil, fmt.Errorf("only %d of %d pods Running after %v", n, cfg.Pods, cfg.Timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, fmt.Errorf("watch ended")
			}
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok || pod.Status.Phase != corev1.PodRunning {
				continue
			}
			now := time.Now()
			mu.Lock()
			if _, seen := running[pod.Name]; !seen {
				if t0, ok := created[pod.Name]; ok {
					running[pod.Name] = now.Sub(t0)
				}
			}
			mu.Unlock()
		}
	}
	res := &Result{Node: node, Wall: time.Since(start), Rate: cfg.Rate}
	if cfg.Running != nil {
		if err := cfg.Running(ctx); err != nil {
			return nil, err
		}
	}
	for _, d := range running {
		res.Latencies = append(res.Latencies, d)
	}
	sort.Slice(res.Latencies, func(i, j int) bool { return res.Latencies[i] < res.Latencies[j] })
	return res, nil
}
