package nodelifecycle_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/capstan-net/capstan/control/controllers/nodelifecycle"
)

type env struct {
	client *fake.Clientset
	clock  *clocktesting.FakeClock
	ctl    *nodelifecycle.Controller
	ctx    context.Context
}

func setup(t *testing.T, start time.Time, objs ...runtime.Object) *env {
	t.Helper()
	client := fake.NewClientset(objs...)
	clk := clocktesting.NewFakeClock(start)
	factory := informers.NewSharedInformerFactory(client, 0)
	ctl := nodelifecycle.New(client, factory, record.NewFakeRecorder(100), clk, nodelifecycle.Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	return &env{client: client, clock: clk, ctl: ctl, ctx: ctx}
}

// pass runs one monitor pass after the informers have caught up with the
// previous pass's writes.
func (e *env) pass() {
	time.Sleep(100 * time.Millisecond)
	e.ctl.MonitorOnce(e.ctx)
}

func (e *env) node(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := e.client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func readyStatus(n *corev1.Node) corev1.ConditionStatus {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return ""
}

func tainted(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == corev1.TaintNodeUnreachable && t.Effect == corev1.TaintEffectNoExecute {
			return true
		}
	}
	return false
}

func pod(name, node string, tol ...corev1.Toleration) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "d"}, Spec: corev1.PodSpec{NodeName: node, Tolerations: tol},
		Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
}

func (e *env) podReady(t *testing.T, name string) corev1.ConditionStatus {
	t.Helper()
	p, err := e.client.CoreV1().Pods("d").Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status
		}
	}
	return ""
}

func TestSilentNodeUnknownTaintedThenPodsEvicted(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", CreationTimestamp: metav1.NewTime(t0.Add(-time.Hour))},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.NewTime(t0)}}}}
	renew := metav1.NewMicroTime(t0)
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "n1", Namespace: corev1.NamespaceNodeLease}, Spec: coordinationv1.LeaseSpec{RenewTime: &renew}}
	thirty := int64(30)
	unreachable := corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}
	short := unreachable
	short.TolerationSeconds = &thirty
	e := setup(t, t0, node, lease,
		pod("forever", "n1", unreachable), pod("short", "n1", short), pod("plain", "n1"), pod("elsewhere", "n2"))
	e.pass() // the controller starts at t0 and gives every node a grace period from then

	e.clock.SetTime(t0.Add(30 * time.Second))
	e.pass()
	if n := e.node(t, "n1"); readyStatus(n) != corev1.ConditionTrue || tainted(n) {
		t.Fatal("node marked down within its 40s grace period")
	}
	e.clock.SetTime(t0.Add(41 * time.Second))
	e.pass()
	n := e.node(t, "n1")
	if readyStatus(n) != corev1.ConditionUnknown || !tainted(n) {
		t.Fatalf("silent node: Ready=%s tainted=%v, want Unknown and tainted", readyStatus(n), tainted(n))
	}
	if r := e.podReady(t, "plain"); r != corev1.ConditionFalse {
		t.Fatalf("pod on the silent node: Ready=%s, want False so Services drop it", r)
	}
	if r := e.podReady(t, "elsewhere"); r != corev1.ConditionTrue {
		t.Fatalf("pod on a live node: Ready=%s, want True", r)
	}
	exists := func(name string) bool {
		_, err := e.client.CoreV1().Pods("d").Get(e.ctx, name, metav1.GetOptions{})
		return err == nil
	}
	e.clock.SetTime(t0.Add(41*time.Second + 31*time.Second))
	e.pass()
	if exists("short") || !exists("plain") || !exists("forever") {
		t.Fatalf("after 31s: short=%v plain=%v forever=%v; want only short evicted", exists("short"), exists("plain"), exists("forever"))
	}
	e.clock.SetTime(t0.Add(41*time.Second + 61*time.Second))
	e.pass()
	if exists("plain") || !exists("forever") || !exists("elsewhere") {
		t.Fatalf("after 61s: plain=%v forever=%v elsewhere=%v; want plain evicted (60s default), the others kept", exists("plain"), exists("forever"), exists("elsewhere"))
	}
}

func TestLeaseRenewalKeepsNodeAliveAndLiftsTaint(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", CreationTimestamp: metav1.NewTime(t0)},
		Spec:   corev1.NodeSpec{Taints: []corev1.Taint{{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute}}},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.NewTime(t0)}}}}
	renew := metav1.NewMicroTime(t0.Add(100 * time.Second))
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "n1", Namespace: corev1.NamespaceNodeLease}, Spec: coordinationv1.LeaseSpec{RenewTime: &renew}}
	e := setup(t, t0.Add(120*time.Second), node, lease)
	e.pass()
	n := e.node(t, "n1")
	if readyStatus(n) != corev1.ConditionTrue || tainted(n) {
		t.Fatalf("node renewing its lease: Ready=%s tainted=%v, want True and no taint", readyStatus(n), tainted(n))
	}
}
