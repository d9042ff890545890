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
	"sort"
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
}

// Result is what a run measured.
type Result struct {
	Pods, Watchers       int
	CreateSeconds        float64
	CreatesPerSecond     float64
	Deliveries           int
	WatchP50, WatchP99   time.Duration
	WatchMax             time.Duration
	CreateP50, CreateP99 time.Duration
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
	srv, err := servertest.Start(ctx, servertest.Options{Binary: cfg.Binary, DataDir: dir})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	defer srv.Stop()
	rc := rest.CopyConfig(srv.Config)
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	if cfg.ContentType != "" {
		rc.ContentType = cfg.ContentType
		rc.AcceptContentTypes = cfg.ContentType
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	// Writers use several connections, as many clients of a real server
	// would; one HTTP/2 connection serialises its frames.
	const conns = 8
	writers := make([]kubernetes.Interface, conns)
	for i := range writers {
		c := rest.CopyConfig(rc)
		c.Proxy = func(*http.Request) (*url.URL, error) { return nil, nil } // uncached transport
		if writers[i], err = kubernetes.NewForConfig(c); err != nil {
			return nil, err
		}
	}
	// The namespace controller bootstraps "default" just after start.
	for i := 0; ; i++ {
		if _, err := client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		} else if i > 100 {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}

	created := make([]atomic.Int64, cfg.Pods) // unix nanos when each create returned
	var mu sync.Mutex
	var deliveries []time.Duration
	var wwg sync.WaitGroup
	for i := 0; i < cfg.Watchers; i++ {
		w, err := client.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		wwg.Add(1)
		go func(w watch.Interface) {
			defer wwg.Done()
			defer w.Stop()
			local := make([]time.Duration, 0, cfg.Pods)
			seen := 0
			for ev := range w.ResultChan() {
				if ev.Type != watch.Added {
					continue
				}
				now := time.Now().UnixNano()
				pod := ev.Object.(*corev1.Pod)
				var idx int
				fmt.Sscanf(pod.Name, "bench-%d", &idx)
				// The event may beat the create's response; wait for it.
				for created[idx].Load() == 0 {
					time.Sleep(50 * time.Microsecond)
				}
				lat := time.Duration(now - created[idx].Load())
				if lat < 0 {
					lat = 0
				}
				local = append(local, lat)
				if seen++; seen == cfg.Pods {
					break
				}
			}
			mu.Lock()
			deliveries = append(deliveries, local...)
			mu.Unlock()
		}(w)
	}

	var next atomic.Int64
	var cwg sync.WaitGroup
	createLat := make([]time.Duration, cfg.Pods)
	var firstErr atomic.Value
	start := time.Now()
	for i := 0; i < cfg.Workers; i++ {
		cwg.Add(1)
		client := writers[i%conns]
		go func() {
			defer cwg.Done()
			for {
				idx := int(next.Add(1) - 1)
				if idx >= cfg.Pods {
					return
				}
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%d", idx), Labels: map[string]string{"app": "bench"}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:latest"}}},
				}
				t0 := time.Now()
				if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					firstErr.CompareAndSwap(nil, err)
					created[idx].Store(time.Now().UnixNano())
					continue
				}
				createLat[idx] = time.Since(t0)
				created[idx].Store(time.Now().UnixNano())
			}
		}()
	}
	cwg.Wait()
	elapsed := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	done := make(chan struct{})
	go func() { wwg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		return nil, fmt.Errorf("watchers did not see every pod within 2 minutes")
	}
	res := &Result{
		Pods: cfg.Pods, Watchers: cfg.Watchers,
		CreateSeconds:    elapsed.Seconds(),
		CreatesPerSecond: float64(cfg.Pods) / elapsed.Seconds(),
		Deliveries:       len(deliveries),
	}
	res.WatchP50, res.WatchP99, res.WatchMax = quantiles(deliveries)
	res.CreateP50, res.CreateP99, _ = quantiles(createLat)
	return res, nil
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
	fmt.Fprintf(w, "  creates/s              %10.0f   (%.2fs total)\n", r.CreatesPerSecond, r.CreateSeconds)
	fmt.Fprintf(w, "  create latency p50     %10s\n", r.CreateP50.Round(time.Microsecond))
	fmt.Fprintf(w, "  create latency p99     %10s\n", r.CreateP99.Round(time.Microsecond))
	fmt.Fprintf(w, "  watch deliveries       %10d\n", r.Deliveries)
	fmt.Fprintf(w, "  watch delivery p50     %10s\n", r.WatchP50.Round(time.Microsecond))
	fmt.Fprintf(w, "  watch delivery p99     %10s\n", r.WatchP99.Round(time.Microsecond))
	fmt.Fprintf(w, "  watch delivery max     %10s\n", r.WatchMax.Round(time.Microsecond))
}
