package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
)

// BenchmarkBind measures scheduling throughput against a server: it makes
// nodes simulated nodes and pods pending pods, then runs a scheduler and
// returns pods bound per second, counted from the scheduler's start to the
// last binding seen by a watch. The objects it made are deleted afterwards.
func BenchmarkBind(ctx context.Context, cfg *rest.Config, pods, nodes int, log *slog.Logger) (float64, error) {
	cfg = rest.CopyConfig(cfg)
	// The client-side limiter would measure itself rather than the scheduler.
	cfg.QPS, cfg.Burst = -1, 0
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return 0, fmt.Errorf("client: %w", err)
	}
	suffix := fmt.Sprint(time.Now().UnixNano())
	ns := "bench-scheduler-" + suffix
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return 0, fmt.Errorf("create namespace: %w", err)
	}
	var nodeNames []string
	defer func() {
		// Cleanup must run even when ctx has ended.
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		client.CoreV1().Namespaces().Delete(cctx, ns, metav1.DeleteOptions{})
		for _, n := range nodeNames {
			client.CoreV1().Nodes().Delete(cctx, n, metav1.DeleteOptions{})
		}
	}()
	for i := 0; i < nodes; i++ {
		name := fmt.Sprintf("bench-%s-node-%d", suffix, i)
		if err := CreateSimulatedNode(ctx, client, name, SimulatedNodeResources{CPU: "64", Memory: "256Gi", Pods: 250}, nil); err != nil {
			return 0, err
		}
		nodeNames = append(nodeNames, name)
	}
	if err := parallel(ctx, pods, 16, func(i int) error {
		_, err := client.CoreV1().Pods(ns).Create(ctx, benchPod(fmt.Sprintf("pod-%d", i)), metav1.CreateOptions{})
		return err
	}); err != nil {
		return 0, fmt.Errorf("create pods: %w", err)
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	factory := informers.NewSharedInformerFactory(client, 0)
	var bound atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	count := func(old, pod *corev1.Pod) {
		if pod.Namespace == ns && pod.Spec.NodeName != "" && (old == nil || old.Spec.NodeName == "") {
			if bound.Add(1) == int64(pods) {
				once.Do(func() { close(done) })
			}
		}
	}
	_, err = factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { count(nil, obj.(*corev1.Pod)) },
		UpdateFunc: func(old, obj interface{}) { count(old.(*corev1.Pod), obj.(*corev1.Pod)) },
	})
	if err != nil {
		return 0, fmt.Errorf("watch pods: %w", err)
	}
	// The broadcaster logs through the context's logr logger, so its
	// complaints about events dropped at shutdown go to log.
	broadcaster := record.NewBroadcaster(record.WithContext(logr.NewContext(runCtx, logr.FromSlogHandler(log.Handler()))))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: Name})
	s := New(client, factory, recorder, clock.RealClock{}, rand.New(rand.NewPCG(1, 2)), log)

	start := time.Now()
	factory.Start(runCtx.Done())
	go s.Run(runCtx, 32)
	select {
	case <-done:
	case <-ctx.Done():
		return 0, fmt.Errorf("%d of %d pods bound: %w", bound.Load(), pods, ctx.Err())
	}
	elapsed := time.Since(start)
	stop()
	factory.Shutdown()
	return float64(pods) / elapsed.Seconds(), nil
}

func benchPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "bench"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "c", Image: "capstan.local/echo:latest",
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			}},
		}}},
	}
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first error.
func parallel(ctx context.Context, n, workers int, fn func(i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// SimulatedNodeResources is what a simulated node offers.
type SimulatedNodeResources struct {
	CPU, Memory string
	Pods        int64
}

// CreateSimulatedNode registers a Ready node with no kubelet behind it,
// for benchmarks and tests: the object and its status are all there is.
func CreateSimulatedNode(ctx context.Context, client kubernetes.Interface, name string, res SimulatedNodeResources, labels map[string]string) error {
	alloc := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(res.CPU),
		corev1.ResourceMemory: resource.MustParse(res.Memory),
		corev1.ResourcePods:   *resource.NewQuantity(res.Pods, resource.DecimalSI),
	}
	lbls := map[string]string{"kubernetes.io/hostname": name}
	for k, v := range labels {
		lbls[k] = v
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	// Controllers (node IPAM) may write the new node first.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status = corev1.NodeStatus{
			Capacity: alloc, Allocatable: alloc,
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
			}},
		}
		_, err = client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("node %s status: %w", name, err)
	}
	return nil
}
