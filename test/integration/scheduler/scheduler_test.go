package scheduler_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/control/scheduler"
	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

// startScheduler runs a scheduler with a real event recorder until the
// test ends.
func startScheduler(t testing.TB, client kubernetes.Interface) {
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(client, 0)
	broadcaster := record.NewBroadcaster(record.WithContext(logr.NewContext(ctx, logr.Discard())))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: scheduler.Name})
	s := scheduler.New(client, factory, recorder, clock.RealClock{}, rand.New(rand.NewPCG(7, 7)), quietLog())
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() { s.Run(ctx, 4); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		factory.Shutdown()
		broadcaster.Shutdown()
	})
}

func poll(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestAgainstServer(t *testing.T) {
	srv := servertest.Start(t, servertest.Options{})
	client := srv.Client()
	ctx := context.Background()
	const ns = "sched"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if err := scheduler.CreateSimulatedNode(ctx, client, fmt.Sprintf("node-%d", i), scheduler.SimulatedNodeResources{CPU: "4", Memory: "8Gi", Pods: 110}, nil); err != nil {
			t.Fatal(err)
		}
	}
	startScheduler(t, client)

	t.Run("pods of one owner spread 4/3/3", func(t *testing.T) {
		replicas := int32(10)
		rs, err := client.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: appsv1.ReplicaSetSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx"}}},
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		yes := true
		for i := 0; i < 10; i++ {
			p := benchPod(fmt.Sprintf("web-%d", i))
			p.Labels = map[string]string{"app": "web"}
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: &yes}}
			if _, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var counts []int
		poll(t, "10 pods bound", 30*time.Second, func() (bool, error) {
			pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return false, err
			}
			per := map[string]int{}
			for _, p := range pods.Items {
				if p.Spec.NodeName == "" {
					return false, nil
				}
				per[p.Spec.NodeName]++
			}
			counts = counts[:0]
			for _, n := range per {
				counts = append(counts, n)
			}
			return len(pods.Items) == 10, nil
		})
		slices.Sort(counts)
		if !reflect.DeepEqual(counts, []int{3, 3, 4}) {
			t.Fatalf("pods per node %v, want 3/3/4", counts)
		}
	})

	t.Run("pod too big stays pending until a bigger node comes", func(t *testing.T) {
		big := benchPod("big")
		big.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("16")
		if _, err := client.CoreV1().Pods(ns).Create(ctx, big, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		const msg = "0/3 nodes are available: 3 Insufficient cpu."
		poll(t, "PodScheduled=False", 30*time.Second, func() (bool, error) {
			p, err := client.CoreV1().Pods(ns).Get(ctx, "big", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if p.Spec.NodeName != "" {
				return false, fmt.Errorf("bound to %s", p.Spec.NodeName)
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse &&
					c.Reason == corev1.PodReasonUnschedulable && c.Message == msg {
					return true, nil
				}
			}
			return false, nil
		})
		poll(t, "FailedScheduling event", 30*time.Second, func() (bool, error) {
			evs, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			for _, e := range evs.Items {
				if e.InvolvedObject.Name == "big" && e.Reason == "FailedScheduling" && e.Type == corev1.EventTypeWarning && e.Message == msg {
					return true, nil
				}
			}
			return false, nil
		})
		if err := scheduler.CreateSimulatedNode(ctx, client, "node-big", scheduler.SimulatedNodeResources{CPU: "32", Memory: "64Gi", Pods: 110}, nil); err != nil {
			t.Fatal(err)
		}
		poll(t, "big bound to node-big", 30*time.Second, func() (bool, error) {
			p, err := client.CoreV1().Pods(ns).Get(ctx, "big", metav1.GetOptions{})
			return err == nil && p.Spec.NodeName == "node-big", err
		})
	})

	t.Run("benchmark runs", func(t *testing.T) {
		bctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		rate, err := scheduler.BenchmarkBind(bctx, srv.Config, 60, 4, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		if rate <= 0 {
			t.Fatalf("rate %v", rate)
		}
	})
}

// BenchmarkSchedulerBind reports pods bound per second for 5,000 pods on
// 100 simulated nodes; run with -run '^$' -bench SchedulerBind -benchtime 1x.
func BenchmarkSchedulerBind(b *testing.B) {
	srv := servertest.Start(b, servertest.Options{})
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		rate, err := scheduler.BenchmarkBind(ctx, srv.Config, 5000, 100, quietLog())
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(rate, "pods/s")
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// benchPod is a small pod of the kind the benchmark schedules.
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
