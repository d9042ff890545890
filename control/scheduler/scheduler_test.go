package scheduler

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestScheduler(t *testing.T, objs ...runtime.Object) (*Scheduler, *fake.Clientset, informers.SharedInformerFactory, *record.FakeRecorder, *clocktesting.FakeClock) {
	t.Helper()
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	rec := record.NewFakeRecorder(1000)
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	s := New(client, factory, rec, clk, rand.New(rand.NewPCG(1, 2)), quietLog())
	return s, client, factory, rec, clk
}

func TestAssumedPodsPreventOvercommit(t *testing.T) {
	s, _, _, _, _ := newTestScheduler(t)
	s.nodeChanged(nil, node("a", "1", "1Gi", 10))
	s.nodeChanged(nil, node("b", "1", "1Gi", 10))
	p1, p2, p3 := pod("p1", requests("600m", "")), pod("p2", requests("600m", "")), pod("p3", requests("600m", ""))
	d1, err := s.decide(p1)
	if err != nil || d1.node == "" {
		t.Fatalf("p1: %+v %v", d1, err)
	}
	// No informer update arrives in this test: only the assumption
	// remembers that p1 took a node.
	d2, _ := s.decide(p2)
	if d2.node == "" || d2.node == d1.node {
		t.Fatalf("p2 went to %q after p1 on %q", d2.node, d1.node)
	}
	d3, _ := s.decide(p3)
	if d3.node != "" || d3.message != "0/2 nodes are available: 2 Insufficient cpu." {
		t.Fatalf("p3: %+v", d3)
	}
	if d, _ := s.decide(p1); !d.skip {
		t.Fatalf("p1 decided again while its binding is in flight: %+v", d)
	}
	// A failed binding returns the room.
	s.cache.forget(p1.UID)
	if d, _ := s.decide(p3); d.node != d1.node {
		t.Fatalf("p3 after p1's binding failed: %+v", d)
	}
	// The informer's view replaces the assumption rather than adding to it.
	bound := p2.DeepCopy()
	bound.Spec.NodeName = d2.node
	s.podChanged(p2, bound)
	if got := s.cache.nodes[d2.node].requested[corev1.ResourceCPU]; got != 600 {
		t.Fatalf("node %s requests %dm after confirmation, want 600m", d2.node, got)
	}
}

func TestTerminalPodsFreeResources(t *testing.T) {
	s, _, _, _, _ := newTestScheduler(t)
	s.nodeChanged(nil, node("a", "1", "1Gi", 10))
	running := pod("done", requests("1", ""), onNode("a"))
	s.podChanged(nil, running)
	if d, _ := s.decide(pod("p", requests("500m", ""))); d.node != "" {
		t.Fatalf("fits on a full node: %+v", d)
	}
	finished := running.DeepCopy()
	finished.Status.Phase = corev1.PodSucceeded
	s.podChanged(running, finished)
	if d, _ := s.decide(pod("p", requests("500m", ""))); d.node != "a" {
		t.Fatalf("succeeded pod still holds its cpu: %+v", d)
	}
}

// bindReactor makes the fake clientset's pods/binding set spec.nodeName,
// failing the first failures calls.
func bindReactor(client *fake.Clientset, failures int) {
	var mu sync.Mutex
	client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca := a.(k8stesting.CreateAction)
		if ca.GetSubresource() != "binding" {
			return false, nil, nil
		}
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return true, nil, errors.New("storage hiccup")
		}
		b := ca.GetObject().(*corev1.Binding)
		gvr := corev1.SchemeGroupVersion.WithResource("pods")
		obj, err := client.Tracker().Get(gvr, b.Namespace, b.Name)
		if err != nil {
			return true, nil, err
		}
		p := obj.(*corev1.Pod).DeepCopy()
		p.Spec.NodeName = b.Target.Name
		return true, b, client.Tracker().Update(gvr, p, b.Namespace)
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// events collects a FakeRecorder's events as they come.
type events struct {
	mu  sync.Mutex
	all []string
}

func collect(ctx context.Context, rec *record.FakeRecorder) *events {
	e := &events{}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-rec.Events:
				e.mu.Lock()
				e.all = append(e.all, ev)
				e.mu.Unlock()
			}
		}
	}()
	return e
}

func (e *events) has(s string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.all {
		if ev == s {
			return true
		}
	}
	return false
}

func TestRunReportsUnschedulableAndRetriesOnNewNode(t *testing.T) {
	small := node("small", "2", "4Gi", 10)
	fits := pod("fits", requests("1", ""))
	big := pod("big", requests("4", ""))
	other := pod("other", requests("4", ""), func(p *corev1.Pod) { p.Spec.SchedulerName = "someone-else" })
	s, client, factory, rec, _ := newTestScheduler(t, small, fits, big, other)
	bindReactor(client, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := collect(ctx, rec)
	factory.Start(ctx.Done())
	go s.Run(ctx, 2)

	get := func(name string) *corev1.Pod {
		p, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	waitFor(t, "fits to be bound", func() bool { return get("fits").Spec.NodeName == "small" })
	const msg = "0/1 nodes are available: 1 Insufficient cpu."
	waitFor(t, "big's PodScheduled condition", func() bool {
		for _, c := range get("big").Status.Conditions {
			if c.Type == corev1.PodScheduled {
				return c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable && c.Message == msg
			}
		}
		return false
	})
	waitFor(t, "FailedScheduling event", func() bool { return ev.has("Warning FailedScheduling " + msg) })
	waitFor(t, "Scheduled event", func() bool { return ev.has("Normal Scheduled Successfully assigned default/fits to small") })

	if _, err := client.CoreV1().Nodes().Create(ctx, node("large", "8", "16Gi", 10), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "big to be bound to the new node", func() bool { return get("big").Spec.NodeName == "large" })
	if n := get("other").Spec.NodeName; n != "" {
		t.Fatalf("bound a pod for another scheduler to %s", n)
	}
}

func TestRunRetriesFailedBindingAfterBackoff(t *testing.T) {
	s, client, factory, rec, clk := newTestScheduler(t, node("a", "2", "4Gi", 10), pod("p", requests("1", "")))
	bindReactor(client, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := collect(ctx, rec)
	factory.Start(ctx.Done())
	go s.Run(ctx, 1)
	waitFor(t, "the failed binding's event", func() bool {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		for _, e := range ev.all {
			if strings.HasPrefix(e, "Warning FailedScheduling Binding rejected") {
				return true
			}
		}
		return false
	})
	// The retry waits for the back-off on the injected clock.
	time.Sleep(100 * time.Millisecond)
	if p, _ := client.CoreV1().Pods("default").Get(ctx, "p", metav1.GetOptions{}); p.Spec.NodeName != "" {
		t.Fatalf("bound before the back-off passed")
	}
	waitFor(t, "the retry", func() bool {
		clk.Step(backoffBase)
		p, _ := client.CoreV1().Pods("default").Get(ctx, "p", metav1.GetOptions{})
		return p.Spec.NodeName == "a"
	})
}
