package replicaset

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/capstan-net/capstan/control/controllers/expectations"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

type fixture struct {
	t      *testing.T
	client *fake.Clientset
	clock  *testingclock.FakeClock
	c      *Controller
	inf    informers.SharedInformerFactory
}

// newFixture wires the controller to a fake clientset without starting
// informers: tests fill the caches themselves (refresh), so what the
// controller sees is exactly what the test decided.
func newFixture(t *testing.T, objs ...runtime.Object) *fixture {
	client := fake.NewClientset(objs...)
	n := 0
	// The fake tracker does not implement generateName.
	client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		if p.Name == "" {
			n++
			p.Name = fmt.Sprintf("%s%d", p.GenerateName, n)
			p.UID = types.UID(p.Name)
		}
		return false, nil, nil
	})
	f := &fixture{t: t, client: client, clock: testingclock.NewFakeClock(t0)}
	f.inf = informers.NewSharedInformerFactory(client, 0)
	f.c = New(client, f.inf, f.clock, slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.refresh()
	return f
}

// refresh copies the fake API's state into the informer caches.
func (f *fixture) refresh() {
	ctx := context.Background()
	rss, err := f.client.AppsV1().ReplicaSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var items []interface{}
	for i := range rss.Items {
		items = append(items, &rss.Items[i])
	}
	f.inf.Apps().V1().ReplicaSets().Informer().GetIndexer().Replace(items, "")
	pods, err := f.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	items = nil
	for i := range pods.Items {
		items = append(items, &pods.Items[i])
	}
	f.inf.Core().V1().Pods().Informer().GetIndexer().Replace(items, "")
}

func (f *fixture) sync(key string) {
	f.t.Helper()
	if err := f.c.sync(context.Background(), key); err != nil {
		f.t.Fatalf("sync %s: %v", key, err)
	}
}

func (f *fixture) actions(verb, resource string) []k8stesting.Action {
	var out []k8stesting.Action
	for _, a := range f.client.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource {
			out = append(out, a)
		}
	}
	return out
}

func (f *fixture) pods() []corev1.Pod {
	l, err := f.client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return l.Items
}

func (f *fixture) rs(name string) *appsv1.ReplicaSet {
	rs, err := f.client.AppsV1().ReplicaSets("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return rs
}

func newRS(name string, replicas int32) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name), Generation: 2},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name, "tier": "web"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx"}}},
			},
		},
	}
}

type podOpt func(*corev1.Pod)

func scheduled(p *corev1.Pod) { p.Spec.NodeName = "node1" }
func running(p *corev1.Pod)   { p.Status.Phase = corev1.PodRunning }
func readyAt(t time.Time) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t)}}
	}
}
func createdAt(t time.Time) podOpt {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(t) }
}

func newPod(name string, owner *appsv1.ReplicaSet, lbls map[string]string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(name), Labels: lbls, CreationTimestamp: metav1.NewTime(t0)}}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(owner, kind())}
	}
	p.Status.Phase = corev1.PodPending
	for _, o := range opts {
		o(p)
	}
	return p
}

func TestScaleUpCreatesOwnedPodsOnce(t *testing.T) {
	rs := newRS("web", 3)
	f := newFixture(t, rs)
	f.sync("default/web")

	pods := f.pods()
	if len(pods) != 3 {
		t.Fatalf("pods = %d, want 3", len(pods))
	}
	for _, p := range pods {
		ref := metav1.GetControllerOf(&p)
		if ref == nil || ref.UID != rs.UID || ref.Kind != "ReplicaSet" {
			t.Errorf("pod %s controller = %+v", p.Name, ref)
		}
		if p.GenerateName != "web-" || p.Labels["tier"] != "web" {
			t.Errorf("pod %s: generateName %q labels %v", p.Name, p.GenerateName, p.Labels)
		}
	}

	// The informer has not shown the pods yet: a second sync must not
	// create three more.
	f.sync("default/web")
	if n := len(f.actions("create", "pods")); n != 3 {
		t.Fatalf("creates after stale resync = %d, want 3", n)
	}

	// Once the informer reports them the count is trusted again, and
	// already right.
	f.refresh()
	for i := range pods {
		f.c.addPod(&pods[i])
	}
	f.sync("default/web")
	if n := len(f.actions("create", "pods")); n != 3 {
		t.Fatalf("creates after catch-up = %d, want 3", n)
	}
}

func TestExpectationsExpire(t *testing.T) {
	rs := newRS("web", 2)
	f := newFixture(t, rs)
	f.sync("default/web")
	// Pretend the created pods were lost; after the TTL the controller
	// must stop waiting for their events and create again.
	for _, p := range f.pods() {
		if err := f.client.CoreV1().Pods("default").Delete(context.Background(), p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	f.sync("default/web")
	if n := len(f.actions("create", "pods")); n != 2 {
		t.Fatalf("creates before TTL = %d, want 2", n)
	}
	f.clock.Step(expectations.TTL + time.Second)
	f.sync("default/web")
	if n := len(f.actions("create", "pods")); n != 4 {
		t.Fatalf("creates after TTL = %d, want 4", n)
	}
}

func TestScaleDownOrder(t *testing.T) {
	rs := newRS("web", 1)
	l := map[string]string{"app": "web", "tier": "web"}
	objs := []runtime.Object{rs,
		newPod("old-ready", rs, l, scheduled, readyAt(t0.Add(-time.Hour)), createdAt(t0.Add(-2*time.Hour))),
		newPod("new-ready", rs, l, scheduled, readyAt(t0.Add(-time.Minute)), createdAt(t0.Add(-time.Hour))),
		newPod("not-ready", rs, l, scheduled, running, createdAt(t0.Add(-3*time.Hour))),
		newPod("unscheduled", rs, l, createdAt(t0.Add(-4*time.Hour))),
	}
	f := newFixture(t, objs...)
	f.sync("default/web")
	var deleted []string
	for _, a := range f.actions("delete", "pods") {
		deleted = append(deleted, a.(k8stesting.DeleteAction).GetName())
	}
	want := []string{"unscheduled", "not-ready", "new-ready"}
	if fmt.Sprint(deleted) != fmt.Sprint(want) {
		t.Fatalf("deleted %v, want %v in that order", deleted, want)
	}
	left := f.pods()
	if len(left) != 1 || left[0].Name != "old-ready" {
		t.Fatalf("left %v", left)
	}
	// Status must not count the pods just deleted.
	if st := f.rs("web").Status; st.Replicas != 1 || st.ReadyReplicas != 1 {
		t.Fatalf("status after scale-down = %+v", st)
	}
}

func TestAdoptAndRelease(t *testing.T) {
	rs := newRS("web", 2)
	other := newRS("other", 0)
	objs := []runtime.Object{rs, other,
		newPod("orphan", nil, map[string]string{"app": "web", "tier": "web"}, running),
		newPod("strayed", rs, map[string]string{"app": "db"}, running),
		newPod("foreign", other, map[string]string{"app": "web"}, running),
	}
	f := newFixture(t, objs...)
	f.sync("default/web")

	byName := map[string]corev1.Pod{}
	for _, p := range f.pods() {
		byName[p.Name] = p
	}
	if ref := metav1.GetControllerOf(ptr(byName["orphan"])); ref == nil || ref.UID != rs.UID {
		t.Errorf("orphan not adopted: %+v", byName["orphan"].OwnerReferences)
	}
	if refs := byName["strayed"].OwnerReferences; len(refs) != 0 {
		t.Errorf("strayed pod not released: %+v", refs)
	}
	if ref := metav1.GetControllerOf(ptr(byName["foreign"])); ref == nil || ref.UID != other.UID {
		t.Errorf("pod of another controller was taken: %+v", byName["foreign"].OwnerReferences)
	}
	// One adopted pod counts toward two replicas; one more is created.
	if n := len(f.actions("create", "pods")); n != 1 {
		t.Errorf("creates = %d, want 1", n)
	}
}

func ptr(p corev1.Pod) *corev1.Pod { return &p }

func TestStatusCountsAndMinReadySeconds(t *testing.T) {
	rs := newRS("web", 4)
	rs.Spec.MinReadySeconds = 10
	full := map[string]string{"app": "web", "tier": "web"}
	objs := []runtime.Object{rs,
		newPod("a", rs, full, readyAt(t0.Add(-time.Minute))),
		newPod("b", rs, full, readyAt(t0.Add(-5*time.Second))),
		newPod("c", rs, map[string]string{"app": "web"}, readyAt(t0.Add(-time.Minute))),
		newPod("d", rs, full, running),
	}
	f := newFixture(t, objs...)
	f.sync("default/web")
	st := f.rs("web").Status
	if st.Replicas != 4 || st.FullyLabeledReplicas != 3 || st.ReadyReplicas != 3 || st.AvailableReplicas != 2 || st.ObservedGeneration != 2 {
		t.Fatalf("status = %+v", st)
	}
	f.refresh()
	f.clock.Step(6 * time.Second)
	f.sync("default/web")
	if st := f.rs("web").Status; st.AvailableReplicas != 3 {
		t.Fatalf("available after minReadySeconds = %d, want 3", st.AvailableReplicas)
	}
}

func TestDeleteFirstOrdering(t *testing.T) {
	l := map[string]string{"app": "web"}
	pods := []*corev1.Pod{
		newPod("ready-old", nil, l, scheduled, readyAt(t0.Add(-time.Hour))),
		newPod("ready-new", nil, l, scheduled, readyAt(t0.Add(-time.Second))),
		newPod("pending", nil, l, scheduled),
		newPod("running-unready", nil, l, scheduled, running),
		newPod("unscheduled", nil, l, running),
	}
	sort.SliceStable(pods, func(i, j int) bool { return deleteFirst(pods[i], pods[j]) })
	var got []string
	for _, p := range pods {
		got = append(got, p.Name)
	}
	want := "[unscheduled pending running-unready ready-new ready-old]"
	if fmt.Sprint(got) != want {
		t.Fatalf("order %v, want %s", got, want)
	}
}

func TestSlowStartStopsAfterFailedBatch(t *testing.T) {
	calls := 0
	var mu sync.Mutex
	ok, err := slowStart(100, func() error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls > 3 {
			return fmt.Errorf("quota exceeded")
		}
		return nil
	})
	// Batches 1 and 2 succeed (3 calls); the batch of 4 fails and is
	// the last one tried.
	if ok != 3 || err == nil || calls != 7 {
		t.Fatalf("slowStart: %d ok, %d calls, err %v; want 3, 7, an error", ok, calls, err)
	}
}

func TestCreateFailureLowersExpectations(t *testing.T) {
	rs := newRS("web", 3)
	f := newFixture(t, rs)
	f.client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf("admission denied")
	})
	if err := f.c.sync(context.Background(), "default/web"); err == nil {
		t.Fatal("sync with failing creates returned no error")
	}
	// No create succeeded, so nothing is awaited and the next sync
	// tries again at once.
	if !f.c.expectations.Satisfied("default/web") {
		t.Fatal("expectations still pending after failed creates")
	}
	if c := f.rs("web").Status.Conditions; len(c) != 1 || c[0].Type != appsv1.ReplicaSetReplicaFailure {
		t.Fatalf("conditions = %+v, want ReplicaFailure", c)
	}
}
