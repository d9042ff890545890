package daemonset

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	testingclock "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

const dsName = "agent"

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
	dss, err := f.client.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var items []interface{}
	for i := range dss.Items {
		items = append(items, &dss.Items[i])
	}
	if err := f.inf.Apps().V1().DaemonSets().Informer().GetIndexer().Replace(items, ""); err != nil {
		f.t.Fatal(err)
	}
	pods, err := f.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	items = nil
	for i := range pods.Items {
		items = append(items, &pods.Items[i])
	}
	if err := f.inf.Core().V1().Pods().Informer().GetIndexer().Replace(items, ""); err != nil {
		f.t.Fatal(err)
	}
	nodes, err := f.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	items = nil
	for i := range nodes.Items {
		items = append(items, &nodes.Items[i])
	}
	if err := f.inf.Core().V1().Nodes().Informer().GetIndexer().Replace(items, ""); err != nil {
		f.t.Fatal(err)
	}
}

// catchUp stands for the informer delivering the controller's own writes:
// caches refreshed and expectations met.
func (f *fixture) catchUp() {
	f.refresh()
	f.c.expectations.Forget("default/" + dsName)
}

func (f *fixture) sync() {
	f.t.Helper()
	if err := f.c.sync(context.Background(), "default/"+dsName); err != nil {
		f.t.Fatalf("sync: %v", err)
	}
}

func (f *fixture) actions(verb, resource string) []k8stesting.Action {
	var out []k8stesting.Action
	for _, a := range f.client.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource && a.GetSubresource() == "" {
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

// podsByNode maps each node to the names of the pods aimed at it.
func (f *fixture) podsByNode() map[string][]string {
	out := map[string][]string{}
	for _, p := range f.pods() {
		out[targetNode(&p)] = append(out[targetNode(&p)], p.Name)
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out
}

func (f *fixture) ds() *appsv1.DaemonSet {
	ds, err := f.client.AppsV1().DaemonSets("default").Get(context.Background(), dsName, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return ds
}

func (f *fixture) setPod(p *corev1.Pod) {
	f.t.Helper()
	if _, err := f.client.CoreV1().Pods("default").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func newDS() *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: dsName, Namespace: "default", UID: "uid-agent", Generation: 3},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": dsName}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": dsName}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "agent:v1"}}},
			},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
		},
	}
}

func newNode(name string, lbls map[string]string, taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}, Spec: corev1.NodeSpec{Taints: taints}}
}

type podOpt func(*corev1.Pod)

func ready(p *corev1.Pod) {
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0.Add(-time.Hour))}}
}
func withHash(h string) podOpt {
	return func(p *corev1.Pod) { p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] = h }
}
func createdAt(t time.Time) podOpt {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(t) }
}
func failed(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }

// newPod makes a pod of ds bound to node, as if the scheduler had run.
func newPod(name string, ds *appsv1.DaemonSet, node string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(name),
			Labels: map[string]string{"app": dsName}, CreationTimestamp: metav1.NewTime(t0.Add(-2 * time.Hour)),
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(ds, kind())}},
		Spec:   corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func mustHash(t *testing.T, ds *appsv1.DaemonSet) string {
	t.Helper()
	h, err := templateHash(ds)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestFit(t *testing.T) {
	base := newDS()
	withSelector := newDS()
	withSelector.Spec.Template.Spec.NodeSelector = map[string]string{"role": "edge"}
	withAffinity := newDS()
	withAffinity.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a", "b"}}},
		}}},
	}}
	tolerant := newDS()
	tolerant.Spec.Template.Spec.Tolerations = []corev1.Toleration{{Key: "gpu", Operator: corev1.TolerationOpExists}}
	pinned := newDS()
	pinned.Spec.Template.Spec.NodeName = "n1"

	noSched := corev1.Taint{Key: "gpu", Value: "true", Effect: corev1.TaintEffectNoSchedule}
	noExec := corev1.Taint{Key: "gpu", Value: "true", Effect: corev1.TaintEffectNoExecute}
	prefer := corev1.Taint{Key: "gpu", Effect: corev1.TaintEffectPreferNoSchedule}
	notReady := corev1.Taint{Key: taintNotReady, Effect: corev1.TaintEffectNoExecute}
	unsched := corev1.Taint{Key: taintUnschedulable, Effect: corev1.TaintEffectNoSchedule}

	cases := []struct {
		name      string
		ds        *appsv1.DaemonSet
		node      *corev1.Node
		run, cont bool
	}{
		{"plain", base, newNode("n1", nil), true, true},
		{"selector matches", withSelector, newNode("n1", map[string]string{"role": "edge"}), true, true},
		{"selector misses", withSelector, newNode("n1", map[string]string{"role": "core"}), false, false},
		{"affinity matches", withAffinity, newNode("n1", map[string]string{"zone": "b"}), true, true},
		{"affinity misses", withAffinity, newNode("n1", map[string]string{"zone": "c"}), false, false},
		{"affinity label absent", withAffinity, newNode("n1", nil), false, false},
		{"NoSchedule untolerated", base, newNode("n1", nil, noSched), false, true},
		{"NoExecute untolerated", base, newNode("n1", nil, noExec), false, false},
		{"PreferNoSchedule ignored", base, newNode("n1", nil, prefer), true, true},
		{"NoExecute tolerated", tolerant, newNode("n1", nil, noExec), true, true},
		{"not-ready tolerated by default", base, newNode("n1", nil, notReady), true, true},
		{"unschedulable tolerated by default", base, newNode("n1", nil, unsched), true, true},
		{"nodeName elsewhere", pinned, newNode("n2", nil), false, false},
		{"nodeName here", pinned, newNode("n1", nil), true, true},
	}
	for _, tc := range cases {
		run, cont := fit(templatePod(tc.ds), tc.node, logr.Discard())
		if run != tc.run || cont != tc.cont {
			t.Errorf("%s: fit = (%v, %v), want (%v, %v)", tc.name, run, cont, tc.run, tc.cont)
		}
	}
}

func TestCreatesOnePinnedPodPerEligibleNode(t *testing.T) {
	ds := newDS()
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"agent": "yes"}
	yes := map[string]string{"agent": "yes"}
	f := newFixture(t, ds,
		newNode("a", yes), newNode("b", yes),
		newNode("c", map[string]string{"agent": "no"}),
		newNode("d", yes, corev1.Taint{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}),
	)
	f.sync()

	got := f.podsByNode()
	if len(got) != 2 || len(got["a"]) != 1 || len(got["b"]) != 1 {
		t.Fatalf("pods by node = %v, want one each on a and b", got)
	}
	hash := mustHash(t, ds)
	for _, p := range f.pods() {
		ref := metav1.GetControllerOf(&p)
		if ref == nil || ref.UID != ds.UID || ref.Kind != "DaemonSet" {
			t.Errorf("pod %s controller = %+v", p.Name, ref)
		}
		if p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] != hash || p.Labels["app"] != dsName {
			t.Errorf("pod %s labels %v, want app and hash %s", p.Name, p.Labels, hash)
		}
		terms := p.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		if len(terms) != 1 || len(terms[0].MatchFields) != 1 || terms[0].MatchFields[0].Key != "metadata.name" || len(terms[0].MatchExpressions) != 0 {
			t.Errorf("pod %s affinity terms %+v, want one matchFields metadata.name", p.Name, terms)
		}
		if p.Spec.NodeName != "" {
			t.Errorf("pod %s bound by the controller to %q; the scheduler binds", p.Name, p.Spec.NodeName)
		}
		want := map[string]corev1.TaintEffect{
			taintNotReady: corev1.TaintEffectNoExecute, taintUnreachable: corev1.TaintEffectNoExecute,
			taintDiskPressure: corev1.TaintEffectNoSchedule, taintMemoryPressure: corev1.TaintEffectNoSchedule,
			taintPIDPressure: corev1.TaintEffectNoSchedule, taintUnschedulable: corev1.TaintEffectNoSchedule,
		}
		for _, tol := range p.Spec.Tolerations {
			if want[tol.Key] == tol.Effect && tol.Operator == corev1.TolerationOpExists && tol.TolerationSeconds == nil {
				delete(want, tol.Key)
			}
		}
		if len(want) != 0 {
			t.Errorf("pod %s lacks standard tolerations %v", p.Name, want)
		}
	}

	// The informer has not shown the pods yet: a second sync must not
	// create them again.
	f.sync()
	if n := len(f.actions("create", "pods")); n != 2 {
		t.Fatalf("creates after stale resync = %d, want 2", n)
	}
	// Once the informer reports them through the handlers, the count is
	// trusted again and already right.
	f.refresh()
	for _, p := range f.pods() {
		f.c.addPod(&p)
	}
	if !f.c.expectations.Satisfied("default/" + dsName) {
		t.Fatal("expectations not satisfied after the creations were observed")
	}
	f.sync()
	if n := len(f.actions("create", "pods")); n != 2 {
		t.Fatalf("creates after catch-up = %d, want 2", n)
	}
}

func TestFollowsNodeAddAndRemove(t *testing.T) {
	ds := newDS()
	f := newFixture(t, ds, newNode("a", nil), newNode("b", nil))
	f.sync()
	f.catchUp()
	before := f.podsByNode()

	ctx := context.Background()
	c, err := f.client.CoreV1().Nodes().Create(ctx, newNode("c", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The node handlers must queue the DaemonSet, except for a heartbeat.
	f.refresh()
	beat := c.DeepCopy()
	beat.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	f.c.updateNode(c, beat)
	if f.c.queue.Len() != 0 {
		t.Fatalf("queue after node heartbeat = %d, want 0", f.c.queue.Len())
	}
	f.c.addNode(c)
	if f.c.queue.Len() != 1 {
		t.Fatalf("queue after node add = %d, want 1", f.c.queue.Len())
	}
	if err := f.client.CoreV1().Nodes().Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.refresh()
	f.sync()

	after := f.podsByNode()
	if len(after["c"]) != 1 {
		t.Errorf("new node c has pods %v, want 1", after["c"])
	}
	if len(after["a"]) != 0 {
		t.Errorf("removed node a still has pods %v", after["a"])
	}
	if fmt.Sprint(after["b"]) != fmt.Sprint(before["b"]) {
		t.Errorf("pods on untouched node b changed: %v -> %v", before["b"], after["b"])
	}
}

func TestDeletesMisplacedDuplicateAndStrayPods(t *testing.T) {
	ds := newDS()
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"agent": "yes"}
	yes := map[string]string{"agent": "yes"}
	h := mustHash(t, ds)
	f := newFixture(t, ds,
		newNode("a", yes),
		newNode("b", map[string]string{"agent": "no"}),
		newNode("c", yes, corev1.Taint{Key: "k", Effect: corev1.TaintEffectNoSchedule}),
		newNode("d", yes, corev1.Taint{Key: "k", Effect: corev1.TaintEffectNoExecute}),
		newPod("a-old", ds, "a", ready, withHash(h), createdAt(t0.Add(-3*time.Hour))),
		newPod("a-new", ds, "a", ready, withHash(h)),
		newPod("b-1", ds, "b", ready, withHash(h)),
		newPod("c-1", ds, "c", ready, withHash(h)),
		newPod("d-1", ds, "d", ready, withHash(h)),
		newPod("gone-1", ds, "gone", ready, withHash(h)),
		newPod("other", newOtherDS(), "b", ready),
	)
	f.sync()
	var deleted []string
	for _, a := range f.actions("delete", "pods") {
		deleted = append(deleted, a.(k8stesting.DeleteAction).GetName())
	}
	sort.Strings(deleted)
	// c-1 stays: a NoSchedule taint keeps new pods off but evicts nothing.
	if want := "[a-new b-1 d-1 gone-1]"; fmt.Sprint(deleted) != want {
		t.Fatalf("deleted %v, want %s", deleted, want)
	}
	if n := len(f.actions("create", "pods")); n != 0 {
		t.Fatalf("creates = %d, want 0", n)
	}
	st := f.ds().Status
	if st.DesiredNumberScheduled != 1 || st.CurrentNumberScheduled != 1 || st.NumberMisscheduled != 1 {
		t.Fatalf("status %+v, want desired 1 current 1 misscheduled 1 (c-1)", st)
	}
}

func newOtherDS() *appsv1.DaemonSet {
	o := newDS()
	o.Name, o.UID = "other", "uid-other"
	return o
}

func TestStatusCounts(t *testing.T) {
	ds := newDS()
	ds.Spec.MinReadySeconds = 30
	// OnDelete, so the old pod c-1 stays and is counted.
	ds.Spec.UpdateStrategy = appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}
	h := mustHash(t, ds)
	justReady := func(p *corev1.Pod) {
		ready(p)
		p.Status.Conditions[0].LastTransitionTime = metav1.NewTime(t0.Add(-10 * time.Second))
	}
	f := newFixture(t, ds,
		newNode("a", nil), newNode("b", nil), newNode("c", nil), newNode("d", nil),
		newNode("x", nil, corev1.Taint{Key: "k", Effect: corev1.TaintEffectNoSchedule}),
		newPod("a-1", ds, "a", ready, withHash(h)),
		newPod("b-1", ds, "b", justReady, withHash(h)),
		newPod("c-1", ds, "c", ready, withHash("old")),
		newPod("d-1", ds, "d", withHash(h)),
		newPod("x-1", ds, "x", ready, withHash(h)),
	)
	f.sync()
	st := f.ds().Status
	want := appsv1.DaemonSetStatus{
		DesiredNumberScheduled: 4, CurrentNumberScheduled: 4, NumberMisscheduled: 1,
		NumberReady: 3, NumberAvailable: 2, UpdatedNumberScheduled: 3, NumberUnavailable: 2,
		ObservedGeneration: 3,
	}
	if !apiequality.Semantic.DeepEqual(st, want) {
		t.Fatalf("status\n got %+v\nwant %+v", st, want)
	}
	// b-1 ripens 20s later with no event of its own.
	f.refresh()
	f.clock.Step(21 * time.Second)
	f.sync()
	if st := f.ds().Status; st.NumberAvailable != 3 || st.NumberUnavailable != 1 {
		t.Fatalf("after minReadySeconds: available %d unavailable %d, want 3 and 1", st.NumberAvailable, st.NumberUnavailable)
	}
}

// TestRollingUpdateStaysWithinMaxUnavailable walks a template change to the
// end, making new pods ready between steps, and checks after every sync
// that no more nodes lack an available pod than maxUnavailable allows.
func TestRollingUpdateStaysWithinMaxUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		max   *intstr.IntOrString
		want  int
		nodes int
	}{
		{"default", nil, 1, 4},
		{"two", ptr(intstr.FromInt32(2)), 2, 5},
		{"percent rounds up", ptr(intstr.FromString("30%")), 2, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := newDS()
			oldHash := mustHash(t, old)
			ds := newDS()
			ds.Spec.Template.Spec.Containers[0].Image = "agent:v2"
			if tc.max != nil {
				ds.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateDaemonSet{MaxUnavailable: tc.max}
			}
			newHash := mustHash(t, ds)
			if newHash == oldHash {
				t.Fatal("template change kept the hash")
			}
			objs := []runtime.Object{ds}
			for i := 0; i < tc.nodes; i++ {
				n := fmt.Sprintf("n%d", i)
				objs = append(objs, newNode(n, nil), newPod("old-"+n, ds, n, ready, withHash(oldHash)))
			}
			f := newFixture(t, objs...)
			maxSeen := 0
			for step := 0; step < 20; step++ {
				f.sync()
				unavailable := 0
				byNode := map[string]bool{}
				updated := 0
				for _, p := range f.pods() {
					if available(&p, 0, t0) {
						byNode[targetNode(&p)] = true
					}
					if p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] == newHash {
						updated++
					}
				}
				unavailable = tc.nodes - len(byNode)
				maxSeen = max(maxSeen, unavailable)
				if unavailable > tc.want {
					t.Fatalf("step %d: %d nodes unavailable, maxUnavailable %d", step, unavailable, tc.want)
				}
				if updated == tc.nodes && unavailable == 0 {
					if maxSeen != tc.want {
						t.Fatalf("update used at most %d unavailable, want exactly %d at some step", maxSeen, tc.want)
					}
					return
				}
				// The kubelet and scheduler: new pods start and get ready.
				for _, p := range f.pods() {
					if p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] == newHash && !podReady(&p) {
						ready(&p)
						p.Spec.NodeName = targetNode(&p)
						f.setPod(&p)
						break
					}
				}
				f.catchUp()
			}
			t.Fatalf("rolling update did not finish: %v", f.podsByNode())
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestRollingUpdateReplacesUnavailableOldPodsAtOnce(t *testing.T) {
	ds := newDS()
	objs := []runtime.Object{ds}
	for i := 0; i < 3; i++ {
		n := fmt.Sprintf("n%d", i)
		// Old and never ready: losing them costs nothing.
		objs = append(objs, newNode(n, nil), newPod("old-"+n, ds, n, withHash("old")))
	}
	f := newFixture(t, objs...)
	f.sync()
	if n := len(f.actions("delete", "pods")); n != 3 {
		t.Fatalf("deleted %d unavailable old pods, want all 3", n)
	}
}

func TestOnDeleteKeepsOldPods(t *testing.T) {
	ds := newDS()
	ds.Spec.UpdateStrategy = appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}
	f := newFixture(t, ds, newNode("a", nil), newNode("b", nil),
		newPod("old-a", ds, "a", ready, withHash("old")),
		newPod("old-b", ds, "b", ready, withHash("old")))
	f.sync()
	if n := len(f.actions("delete", "pods")); n != 0 {
		t.Fatalf("OnDelete deleted %d pods", n)
	}
	if st := f.ds().Status; st.UpdatedNumberScheduled != 0 || st.CurrentNumberScheduled != 2 {
		t.Fatalf("status %+v", st)
	}
	// The user deletes one; its replacement has the new template.
	if err := f.client.CoreV1().Pods("default").Delete(context.Background(), "old-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.refresh()
	f.sync()
	got := f.podsByNode()
	if len(got["a"]) != 1 || got["a"][0] == "old-a" || fmt.Sprint(got["b"]) != "[old-b]" {
		t.Fatalf("pods by node %v", got)
	}
	for _, p := range f.pods() {
		if p.Name != "old-b" && p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] != mustHash(t, ds) {
			t.Errorf("replacement %s has hash %q", p.Name, p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey])
		}
	}
}

func TestFailedPodReplacementBacksOff(t *testing.T) {
	ds := newDS()
	h := mustHash(t, ds)
	f := newFixture(t, ds, newNode("a", nil), newPod("f1", ds, "a", failed, withHash(h)))
	f.sync()
	if n := len(f.actions("delete", "pods")); n != 1 {
		t.Fatalf("first failed pod: %d deletes, want 1", n)
	}
	f.catchUp()
	f.sync() // replacement
	if n := len(f.actions("create", "pods")); n != 1 {
		t.Fatalf("creates after failed pod went = %d, want 1", n)
	}
	// The replacement fails at once: it stays until the backoff ends.
	p := f.pods()[0]
	p.Status.Phase = corev1.PodFailed
	f.setPod(&p)
	f.catchUp()
	f.sync()
	if n := len(f.actions("delete", "pods")); n != 1 {
		t.Fatalf("second failed pod deleted within backoff (%d deletes)", n)
	}
	f.clock.Step(failedBackoffInitial + time.Millisecond)
	f.sync()
	if n := len(f.actions("delete", "pods")); n != 2 {
		t.Fatalf("second failed pod not deleted after backoff (%d deletes)", n)
	}
}

func TestTemplateHash(t *testing.T) {
	a, b := newDS(), newDS()
	b.Status.NumberReady = 7 // status is not the template
	if mustHash(t, a) != mustHash(t, b) {
		t.Fatal("equal templates hash differently")
	}
	b.Spec.Template.Labels["x"] = "y"
	if mustHash(t, a) == mustHash(t, b) {
		t.Fatal("changed template kept its hash")
	}
	c := newDS()
	c.Status.CollisionCount = ptr(int32(1))
	if mustHash(t, a) == mustHash(t, c) {
		t.Fatal("collisionCount did not change the hash")
	}
}

func TestCreateFailureLowersExpectations(t *testing.T) {
	f := newFixture(t, newDS(), newNode("a", nil), newNode("b", nil))
	f.client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf("admission denied")
	})
	if err := f.c.sync(context.Background(), "default/"+dsName); err == nil {
		t.Fatal("sync with failing creates returned no error")
	}
	// The first refusal stops the burst, and nothing is awaited.
	if n := len(f.actions("create", "pods")); n != 1 {
		t.Fatalf("create attempts = %d, want 1", n)
	}
	if !f.c.expectations.Satisfied("default/" + dsName) {
		t.Fatal("expectations still pending after failed creates")
	}
}

func TestAdoptsOrphansAndReleasesStrayedPods(t *testing.T) {
	ds := newDS()
	h := mustHash(t, ds)
	orphan := newPod("orphan", ds, "a", ready, withHash(h))
	orphan.OwnerReferences = nil
	strayed := newPod("strayed", ds, "b", ready, withHash(h))
	strayed.Labels["app"] = "elsewhere"
	f := newFixture(t, ds, newNode("a", nil), newNode("b", nil), orphan, strayed,
		newPod("foreign", newOtherDS(), "a", ready, withHash(h)))
	f.sync()

	byName := map[string]corev1.Pod{}
	for _, p := range f.pods() {
		byName[p.Name] = p
	}
	if ref := metav1.GetControllerOf(ptr(byName["orphan"])); ref == nil || ref.UID != ds.UID {
		t.Errorf("orphan not adopted: %+v", byName["orphan"].OwnerReferences)
	}
	if refs := byName["strayed"].OwnerReferences; len(refs) != 0 {
		t.Errorf("strayed pod not released: %+v", refs)
	}
	if ref := metav1.GetControllerOf(ptr(byName["foreign"])); ref == nil || ref.UID != "uid-other" {
		t.Errorf("pod of another DaemonSet was taken: %+v", byName["foreign"].OwnerReferences)
	}
	// The adopted pod fills node a; node b lost its pod by release and
	// gets a new one.
	got := f.podsByNode()
	if n := len(f.actions("create", "pods")); n != 1 || len(got["b"]) != 2 {
		t.Fatalf("creates = %d, pods by node %v; want 1 create, on b", n, got)
	}
}
