// Package apibench measures the API server: pod creates per second and
// watch delivery latency, against a real server with embedded etcd.
package apibench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/capstan-net/capstan/control/server/servertest"
	"github.com/capstan-net/capstan/test/bench/podbench"
)

// Config sizes a run.
type Config struct {
	// Binary is the capstan binary the server runs from.
	Binary   string
	Pods     int
	Watchers int
	Workers  int
	// DataDir for the server; empty uses a temporary directory.
	DataDir string
	// ContentType of requests: application/json or application/vnd.kubernetes.protobuf.
	ContentType string
	// ServerArgs are extra `capstan server` flags (component tuning).
	ServerArgs []string
}

// Result is what a run measured.
type Result struct {
	Pods, Watchers     int
	CreateSeconds      float64
	CreatesPerSecond   float64
	Deliveries         int
	WatchP50, WatchP99 time.Duration
	WatchMax           time.Duration
	// WatchRestarts counts watches the server ended and the watcher resumed.
	WatchRestarts        int
	CreateP50, CreateP99 time.Duration
	// Server is the server process's memory before the pods were created
	// and after the run (Peak: its high-water mark over the whole run).
	ServerBefore, ServerAfter podbench.Memory
	ServerArgs                []string
	// CPU time the server and the load generator used during the run
	// (watch set-up, creates, last delivery), and the run's length.
	ServerCPU, ClientCPU, Wall time.Duration
}

// Run starts a server, creates the pods while the watchers watch, and
// reports the figures.
func Run(ctx context.Context, cfg Config, log *slog.Logger) (*Result, error) {
	if cfg.Pods <= 0 || cfg.Watchers < 0 || cfg.Workers <= 0 {
		return nil, fmt.Errorf("pods and workers must be positive, watchers not negative")
	}
	dir := cfg.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "capstan-apibench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	srv, err := servertest.Start(ctx, servertest.Options{Binary: cfg.Binary, DataDir: dir, Args: cfg.ServerArgs})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	defer srv.Stop()
	log.Info("server ready", "pid", srv.Pid(), "log", srv.Log)
	rc := clientConfig(srv.Config, cfg.ContentType)
	client, err := connect(rc)
	if err != nil {
		return nil, err
	}
	before, err := podbench.ReadMemory(srv.Pid())
	if err != nil {
		return nil, fmt.Errorf("server memory: %w", err)
	}
	cpu0, err := podbench.CPUTime(srv.Pid())
	if err != nil {
		return nil, fmt.Errorf("server CPU: %w", err)
	}
	self0, t0 := podbench.SelfCPUTime(), time.Now()
	res, err := measure(ctx, cfg, rc, client)
	if err != nil {
		return nil, err
	}
	res.Wall, res.ClientCPU = time.Since(t0), podbench.SelfCPUTime()-self0
	cpu1, err := podbench.CPUTime(srv.Pid())
	if err != nil {
		return nil, fmt.Errorf("server CPU: %w", err)
	}
	res.ServerCPU = cpu1 - cpu0
	if res.ServerAfter, err = podbench.ReadMemory(srv.Pid()); err != nil {
		return nil, fmt.Errorf("server memory: %w", err)
	}
	res.ServerBefore, res.ServerArgs = before, cfg.ServerArgs
	return res, nil
}

// clientConfig is the load generator's: no client-side rate limit.
func clientConfig(base *rest.Config, contentType string) *rest.Config {
	rc := rest.CopyConfig(base)
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	if contentType != "" {
		rc.ContentType = contentType
		rc.AcceptContentTypes = contentType
	}
	return rc
}

// connect is a client on an HTTP/2 connection of its own, as separate
// clients of a real server have: client-go otherwise shares one between
// clients of a config, which serialises their frames, and a watcher whose
// connection is busy with others' streams lags and is ended by the server.
func connect(rc *rest.Config) (kubernetes.Interface, error) {
	c := rest.CopyConfig(rc)
	c.Proxy = func(*http.Request) (*url.URL, error) { return nil, nil } // uncached transport
	return kubernetes.NewForConfig(c)
}

// writers are the creating clients' connections.
const writers = 8

// measure runs the watchers and the creates, each on a connection of its
// own; client lists.
func measure(ctx context.Context, cfg Config, rc *rest.Config, client kubernetes.Interface) (*Result, error) {
	created := make([]atomic.Int64, cfg.Pods) // unix nanos when each create returned
	// From the watch cache (RV "0"): a watch from a quorum list's newer
	// revision waits a second for the cache to catch up ("Too large
	// resource version").
	list, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	w := &watchers{pods: cfg.Pods}
	for i := 0; i < cfg.Watchers; i++ {
		restarts := new(atomic.Int64)
		wc, err := connect(rc)
		if err != nil {
			return nil, err
		}
		rw, err := podbench.WatchPods(ctx, wc, "default", list.ResourceVersion, restarts)
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		w.start(rw, restarts)
	}
	conns := make([]kubernetes.Interface, writers)
	for i := range conns {
		if conns[i], err = connect(rc); err != nil {
			return nil, err
		}
	}
	elapsed, createLat, err := createAll(ctx, cfg, conns, created)
	if err != nil {
		return nil, err
	}
	deliveries, err := w.wait(2*time.Minute, created)
	if err != nil {
		return nil, err
	}
	if len(deliveries) != cfg.Pods*cfg.Watchers {
		return nil, fmt.Errorf("watchers saw %d pods of %d: a watch ended for good", len(deliveries), cfg.Pods*cfg.Watchers)
	}
	res := &Result{
		Pods: cfg.Pods, Watchers: cfg.Watchers,
		CreateSeconds:    elapsed.Seconds(),
		CreatesPerSecond: float64(cfg.Pods) / elapsed.Seconds(),
		Deliveries:       len(deliveries),
		WatchRestarts:    int(w.restarts.Load()),
	}
	res.WatchP50, res.WatchP99, res.WatchMax = quantiles(deliveries)
	res.CreateP50, res.CreateP99, _ = quantiles(createLat)
	return res, nil
}

// watchers record when each watcher decodes each pod's ADDED event. The
// latency against the create's response is worked out at the end: the
// event often arrives before the response, and a watcher waiting for the
// response would stall its stream (the server ends watches that lag).
type watchers struct {
	pods int
	mu   sync.Mutex
	seen [][]int64 // per watcher, unix nanos per pod index
	wg   sync.WaitGroup
	// restarts adds up the watchers' restarts until each saw every pod
	// (a retry watcher may open one more watch as it stops).
	restarts atomic.Int64
}

func (ws *watchers) start(w watch.Interface, restarts *atomic.Int64) {
	ws.wg.Add(1)
	go func() {
		defer ws.wg.Done()
		defer w.Stop()
		at := make([]int64, ws.pods)
		n := 0
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if ev.Type != watch.Added || !ok {
				continue
			}
			now := time.Now().UnixNano()
			var idx int
			if _, err := fmt.Sscanf(pod.Name, "bench-%d", &idx); err != nil || idx >= ws.pods || at[idx] != 0 {
				continue
			}
			at[idx] = now
			if n++; n == ws.pods {
				break
			}
		}
		ws.restarts.Add(restarts.Load())
		ws.mu.Lock()
		ws.seen = append(ws.seen, at)
		ws.mu.Unlock()
	}()
}

// wait returns, once each watcher has seen every pod, the delivery latency
// of every event: from the create's response to the watcher decoding it,
// 0 when the event came first.
func (ws *watchers) wait(timeout time.Duration, created []atomic.Int64) ([]time.Duration, error) {
	done := make(chan struct{})
	go func() { ws.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		return nil, fmt.Errorf("watchers did not see every pod within %v", timeout)
	}
	var out []time.Duration
	for _, at := range ws.seen {
		for idx, t := range at {
			if t != 0 {
				out = append(out, max(0, time.Duration(t-created[idx].Load())))
			}
		}
	}
	return out, nil
}

// createAll creates the pods from cfg.Workers goroutines spread over the
// connections, recording when each create returned.
func createAll(ctx context.Context, cfg Config, conns []kubernetes.Interface, created []atomic.Int64) (time.Duration, []time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	createLat := make([]time.Duration, cfg.Pods)
	var firstErr atomic.Value
	start := time.Now()
	for i := 0; i < cfg.Workers; i++ {
		wg.Add(1)
		client := conns[i%len(conns)]
		go func() {
			defer wg.Done()
			for idx := int(next.Add(1) - 1); idx < cfg.Pods; idx = int(next.Add(1) - 1) {
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%d", idx), Labels: map[string]string{"app": "bench"}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:latest"}}},
				}
				t0 := time.Now()
				_, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
				} else {
					createLat[idx] = time.Since(t0)
				}
				created[idx].Store(time.Now().UnixNano())
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, nil, fmt.Errorf("create: %w", err)
	}
	return elapsed, createLat, nil
}

func quantiles(d []time.Duration) (p50, p99, max time.Duration) {
	if len(d) == 0 {
		return
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)*50/100], d[len(d)*99/100], d[len(d)-1]
}

// Print writes a result table.
func (r *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "API benchmark: %d pods created by concurrent clients, %d watchers\n", r.Pods, r.Watchers)
	fmt.Fprintf(w, "  server: capstan server (kube-apiserver, kube-controller-manager, kube-scheduler, embedded etcd) in a child process\n")
	if len(r.ServerArgs) > 0 {
		fmt.Fprintf(w, "  server flags: %s\n", strings.Join(r.ServerArgs, " "))
	}
	fmt.Fprintf(w, "  (no nodes: the server's scheduler tries every pod and marks it Unschedulable, part of the server's load)\n")
	fmt.Fprintf(w, "  creates/s              %10.0f   (%.2fs total)\n", r.CreatesPerSecond, r.CreateSeconds)
	fmt.Fprintf(w, "  create latency p50     %10s\n", r.CreateP50.Round(time.Microsecond))
	fmt.Fprintf(w, "  create latency p99     %10s\n", r.CreateP99.Round(time.Microsecond))
	fmt.Fprintf(w, "  watch deliveries       %10d\n", r.Deliveries)
	fmt.Fprintf(w, "  watch delivery p50     %10s\n", r.WatchP50.Round(time.Microsecond))
	fmt.Fprintf(w, "  watch delivery p99     %10s\n", r.WatchP99.Round(time.Microsecond))
	fmt.Fprintf(w, "  watch delivery max     %10s\n", r.WatchMax.Round(time.Microsecond))
	fmt.Fprintf(w, "  watch restarts         %10d   (watches the server ended, resumed from their last event)\n", r.WatchRestarts)
	fmt.Fprintf(w, "  CPU during the run     server %.1fs, load generator %.1fs, over %.1fs on %d CPUs\n",
		r.ServerCPU.Seconds(), r.ClientCPU.Seconds(), r.Wall.Seconds(), runtime.NumCPU())
	fmt.Fprintf(w, "  server RSS before      %14s\n", podbench.MiB(r.ServerBefore.RSS))
	fmt.Fprintf(w, "  server RSS after       %14s   (peak %s)\n", podbench.MiB(r.ServerAfter.RSS), podbench.MiB(r.ServerAfter.Peak))
	watchTarget := "no watchers"
	if r.Deliveries > 0 {
		watchTarget = podbench.Verdict(r.WatchP99 < 100*time.Millisecond)
	}
	fmt.Fprintf(w, "  targets: creates/s >= 2000 (%s), watch p99 < 100ms (%s)\n", podbench.Verdict(r.CreatesPerSecond >= 2000), watchTarget)
}
