package deployment

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
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

type fixture struct {
	t      *testing.T
	client *fake.Clientset
	clock  *testingclock.FakeClock
	c      *Controller
	inf    informers.SharedInformerFactory
	uid    int
}

// newFixture runs the controller on a fake clientset with caches the
// test fills (refresh), standing in for the replicaset controller itself.
func newFixture(t *testing.T, objs ...runtime.Object) *fixture {
	f := &fixture{t: t, client: fake.NewClientset(objs...), clock: testingclock.NewFakeClock(t0)}
	// The fake tracker assigns neither UIDs nor creation times; the
	// controller orders sets by age and owns them by UID.
	f.client.PrependReactor("create", "replicasets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		rs := a.(k8stesting.CreateAction).GetObject().(*appsv1.ReplicaSet)
		f.uid++
		rs.UID = types.UID(fmt.Sprintf("rs-uid-%d", f.uid))
		rs.CreationTimestamp = metav1.NewTime(f.clock.Now().Add(time.Duration(f.uid) * time.Second))
		return false, nil, nil
	})
	f.inf = informers.NewSharedInformerFactory(f.client, 0)
	f.c = New(f.client, f.inf, f.clock, slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.refresh()
	return f
}

func (f *fixture) refresh() {
	ctx := context.Background()
	ds, err := f.client.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var items []interface{}
	for i := range ds.Items {
		items = append(items, &ds.Items[i])
	}
	f.inf.Apps().V1().Deployments().Informer().GetIndexer().Replace(items, "")
	items = nil
	for _, rs := range f.rss() {
		items = append(items, rs)
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

func (f *fixture) sync() {
	f.t.Helper()
	f.refresh()
	if err := f.c.sync(context.Background(), "default/web"); err != nil {
		f.t.Fatalf("sync: %v", err)
	}
}

func (f *fixture) rss() []*appsv1.ReplicaSet {
	l, err := f.client.AppsV1().ReplicaSets("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var out []*appsv1.ReplicaSet
	for i := range l.Items {
		out = append(out, &l.Items[i])
	}
	byAge(out)
	return out
}

func (f *fixture) deployment() *appsv1.Deployment {
	d, err := f.client.AppsV1().Deployments("default").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *fixture) updateDeployment(mut func(*appsv1.Deployment)) {
	d := f.deployment()
	mut(d)
	d.Generation++
	if _, err := f.client.AppsV1().Deployments("default").Update(context.Background(), d, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// playReplicaSets does what the replicaset controller would: status
// follows spec, deleted pods vanish at once, and new pods become available
// only if ready is true.
func (f *fixture) playReplicaSets(ready bool) {
	for _, rs := range f.rss() {
		n := replicasOf(rs)
		avail := min(rs.Status.AvailableReplicas, n)
		if ready {
			avail = n
		}
		rs.Status = appsv1.ReplicaSetStatus{Replicas: n, FullyLabeledReplicas: n, ReadyReplicas: avail, AvailableReplicas: avail, ObservedGeneration: rs.Generation}
		if _, err := f.client.AppsV1().ReplicaSets("default").UpdateStatus(context.Background(), rs, metav1.UpdateOptions{}); err != nil {
			f.t.Fatal(err)
		}
	}
}

func newDeployment(replicas int32, image string) *appsv1.Deployment {
	deadline := int32(600)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "d-uid", Generation: 1},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: image}}},
			},
			ProgressDeadlineSeconds: &deadline,
		},
	}
}

func setImage(image string) func(*appsv1.Deployment) {
	return func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = image }
}

func imageOf(rs *appsv1.ReplicaSet) string { return rs.Spec.Template.Spec.Containers[0].Image }

func cond(d *appsv1.Deployment, t appsv1.DeploymentConditionType) *appsv1.DeploymentCondition {
	return condition(&d.Status, t)
}

// converge syncs until the deployment is complete, bounded.
func (f *fixture) converge() {
	f.t.Helper()
	for i := 0; i < 50; i++ {
		f.sync()
		f.playReplicaSets(true)
		f.sync()
		if d := f.deployment(); complete(d, &d.Status) {
			return
		}
	}
	f.t.Fatalf("deployment did not complete: %+v", f.deployment().Status)
}

func TestCreatesReplicaSetAndCompletes(t *testing.T) {
	f := newFixture(t, newDeployment(3, "v1"))
	f.sync()
	rss := f.rss()
	if len(rss) != 1 {
		t.Fatalf("replicasets = %d", len(rss))
	}
	rs := rss[0]
	hash := podTemplateHash(&newDeployment(3, "v1").Spec.Template, nil)
	if rs.Name != "web-"+hash || rs.Labels[hashLabel] != hash || rs.Spec.Template.Labels[hashLabel] != hash || rs.Spec.Selector.MatchLabels[hashLabel] != hash {
		t.Fatalf("replicaset naming/labels wrong: %s %v %v", rs.Name, rs.Labels, rs.Spec.Selector)
	}
	if replicasOf(rs) != 3 || rs.Annotations[revisionAnnotation] != "1" {
		t.Fatalf("replicas %d revision %q", replicasOf(rs), rs.Annotations[revisionAnnotation])
	}
	if ref := metav1.GetControllerOf(rs); ref == nil || ref.UID != "d-uid" {
		t.Fatalf("owner %+v", ref)
	}
	d := f.deployment()
	if d.Annotations[revisionAnnotation] != "1" {
		t.Fatalf("deployment revision %q", d.Annotations[revisionAnnotation])
	}
	if c := cond(d, progressingType); c == nil || c.Reason != reasonNewRSCreated {
		t.Fatalf("progressing = %+v", c)
	}
	if c := cond(d, availableType); c == nil || c.Status != corev1.ConditionFalse {
		t.Fatalf("available = %+v", c)
	}
	f.converge()
	d = f.deployment()
	if d.Status.AvailableReplicas != 3 || d.Status.UpdatedReplicas != 3 || d.Status.UnavailableReplicas != 0 || d.Status.ObservedGeneration != 1 {
		t.Fatalf("status %+v", d.Status)
	}
	if c := cond(d, progressingType); c == nil || c.Reason != reasonNewRSAvailable || c.Status != corev1.ConditionTrue {
		t.Fatalf("progressing = %+v", c)
	}
	if c := cond(d, availableType); c == nil || c.Reason != reasonMinAvailable || c.Status != corev1.ConditionTrue {
		t.Fatalf("available = %+v", c)
	}
}

func TestFenceposts(t *testing.T) {
	for _, tc := range []struct {
		replicas     int32
		surge, unav  intstr.IntOrString
		wantS, wantU int32
	}{
		{10, intstr.FromString("25%"), intstr.FromString("25%"), 3, 2},
		{3, intstr.FromInt32(1), intstr.FromInt32(0), 1, 0},
		{3, intstr.FromInt32(0), intstr.FromInt32(0), 0, 1},
		{4, intstr.FromString("0%"), intstr.FromString("10%"), 0, 1},
		{2, intstr.FromInt32(0), intstr.FromInt32(5), 0, 2},
	} {
		d := newDeployment(tc.replicas, "v1")
		d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxSurge: &tc.surge, MaxUnavailable: &tc.unav}
		s, u, err := fenceposts(d)
		if err != nil || s != tc.wantS || u != tc.wantU {
			t.Errorf("%d %s %s: got %d %d %v, want %d %d", tc.replicas, tc.surge.String(), tc.unav.String(), s, u, err, tc.wantS, tc.wantU)
		}
	}
}

// TestRollingUpdateBounds walks whole rollouts and checks after every
// controller write that the pods never exceed replicas+maxSurge and the
// available pods never drop below replicas-maxUnavailable.
func TestRollingUpdateBounds(t *testing.T) {
	for _, tc := range []struct {
		replicas    int32
		surge, unav intstr.IntOrString
	}{
		{10, intstr.FromString("25%"), intstr.FromString("25%")},
		{3, intstr.FromInt32(1), intstr.FromInt32(0)},
		{3, intstr.FromInt32(0), intstr.FromInt32(1)},
		{5, intstr.FromString("50%"), intstr.FromString("0%")},
		{4, intstr.FromInt32(2), intstr.FromInt32(2)},
	} {
		t.Run(fmt.Sprintf("%d-%s-%s", tc.replicas, tc.surge.String(), tc.unav.String()), func(t *testing.T) {
			d := newDeployment(tc.replicas, "v1")
			d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &tc.surge, MaxUnavailable: &tc.unav}}
			f := newFixture(t, d)
			f.converge()
			surge, unav, _ := fenceposts(d)
			f.updateDeployment(setImage("v2"))

			check := func(when string) {
				var total, avail int32
				for _, rs := range f.rss() {
					total += replicasOf(rs)
					avail += availableOf(rs)
				}
				if total > tc.replicas+surge {
					t.Fatalf("%s: %d pods wanted, max %d", when, total, tc.replicas+surge)
				}
				if avail < tc.replicas-unav {
					t.Fatalf("%s: %d available, min %d", when, avail, tc.replicas-unav)
				}
			}
			steps := 0
			for ; steps < 100; steps++ {
				f.sync()
				check("after sync")
				f.playReplicaSets(false)
				f.sync()
				check("after scale-down before readiness")
				f.playReplicaSets(true)
				if d := f.deployment(); complete(d, &d.Status) {
					break
				}
			}
			if steps == 100 {
				t.Fatalf("rollout did not finish: %+v", f.deployment().Status)
			}
			rss := f.rss()
			if len(rss) != 2 || replicasOf(rss[0]) != 0 || replicasOf(rss[1]) != tc.replicas || imageOf(rss[1]) != "v2" {
				t.Fatalf("final sets wrong")
			}
			if rss[1].Annotations[revisionAnnotation] != "2" || f.deployment().Annotations[revisionAnnotation] != "2" {
				t.Fatalf("revisions: rs %q deployment %q", rss[1].Annotations[revisionAnnotation], f.deployment().Annotations[revisionAnnotation])
			}
			if steps < 1 {
				t.Fatalf("rollout took no steps")
			}
		})
	}
}

func TestRecreateWaitsForOldPods(t *testing.T) {
	d := newDeployment(3, "v1")
	d.Spec.Strategy.Type = appsv1.RecreateDeploymentStrategyType
	f := newFixture(t, d)
	f.converge()
	oldRS := f.rss()[0]
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "old-pod", Namespace: "default", Labels: map[string]string{"app": "web"},
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(oldRS, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	if _, err := f.client.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.updateDeployment(setImage("v2"))
	f.sync()
	rss := f.rss()
	if len(rss) != 2 || replicasOf(rss[0]) != 0 || replicasOf(rss[1]) != 0 {
		t.Fatalf("first step: old %d new %d", replicasOf(rss[0]), replicasOf(rss[1]))
	}
	// Old set scaled to zero but its pod still runs: the new set waits.
	f.playReplicaSets(true)
	f.sync()
	if n := replicasOf(f.rss()[1]); n != 0 {
		t.Fatalf("new set scaled to %d while an old pod runs", n)
	}
	if err := f.client.CoreV1().Pods("default").Delete(context.Background(), "old-pod", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.sync()
	if n := replicasOf(f.rss()[1]); n != 3 {
		t.Fatalf("new set = %d after old pods gone, want 3", n)
	}
}

func TestRollbackReusesOldReplicaSet(t *testing.T) {
	f := newFixture(t, newDeployment(2, "v1"))
	f.converge()
	f.updateDeployment(setImage("v2"))
	f.converge()
	rss := f.rss()
	if len(rss) != 2 {
		t.Fatalf("sets = %d", len(rss))
	}
	v1 := rss[0]
	// What kubectl rollout undo does: copy the old template back
	// without the hash label.
	f.updateDeployment(func(d *appsv1.Deployment) {
		tmpl := v1.Spec.Template.DeepCopy()
		delete(tmpl.Labels, hashLabel)
		d.Spec.Template = *tmpl
	})
	f.converge()
	rss = f.rss()
	if len(rss) != 2 {
		t.Fatalf("rollback created a set: %d sets", len(rss))
	}
	if rss[0].Name != v1.Name || replicasOf(rss[0]) != 2 || replicasOf(rss[1]) != 0 {
		t.Fatalf("after rollback: %s=%d %s=%d", rss[0].Name, replicasOf(rss[0]), rss[1].Name, replicasOf(rss[1]))
	}
	if rss[0].Annotations[revisionAnnotation] != "3" || f.deployment().Annotations[revisionAnnotation] != "3" {
		t.Fatalf("revision after rollback: rs %q deployment %q", rss[0].Annotations[revisionAnnotation], f.deployment().Annotations[revisionAnnotation])
	}
}

func TestRevisionHistoryLimit(t *testing.T) {
	d := newDeployment(1, "v0")
	limit := int32(2)
	d.Spec.RevisionHistoryLimit = &limit
	f := newFixture(t, d)
	f.converge()
	for i := 1; i <= 4; i++ {
		f.updateDeployment(setImage(fmt.Sprintf("v%d", i)))
		f.converge()
	}
	f.playReplicaSets(true)
	f.sync()
	var images []string
	for _, rs := range f.rss() {
		images = append(images, imageOf(rs)+"@"+rs.Annotations[revisionAnnotation])
	}
	// Current (v4) plus the two newest old ones.
	if want := "[v2@3 v3@4 v4@5]"; fmt.Sprint(images) != want {
		t.Fatalf("sets %v, want %s", images, want)
	}
}

func TestPauseAndResume(t *testing.T) {
	f := newFixture(t, newDeployment(2, "v1"))
	f.converge()
	f.updateDeployment(func(d *appsv1.Deployment) {
		d.Spec.Paused = true
		d.Spec.Template.Spec.Containers[0].Image = "v2"
		*d.Spec.Replicas = 4
	})
	f.sync()
	f.playReplicaSets(true)
	f.sync()
	rss := f.rss()
	if len(rss) != 1 || imageOf(rss[0]) != "v1" {
		t.Fatalf("paused deployment rolled out: %d sets", len(rss))
	}
	if replicasOf(rss[0]) != 4 {
		t.Fatalf("scaling while paused: %d, want 4", replicasOf(rss[0]))
	}
	d := f.deployment()
	if c := cond(d, progressingType); c == nil || c.Reason != reasonPaused {
		t.Fatalf("progressing while paused = %+v", c)
	}
	if d.Status.ObservedGeneration != d.Generation || d.Status.AvailableReplicas != 4 {
		t.Fatalf("status while paused %+v", d.Status)
	}
	f.updateDeployment(func(d *appsv1.Deployment) { d.Spec.Paused = false })
	f.converge()
	rss = f.rss()
	if len(rss) != 2 || imageOf(rss[1]) != "v2" || replicasOf(rss[1]) != 4 {
		t.Fatalf("resume did not roll out")
	}
}

func TestProgressDeadline(t *testing.T) {
	d := newDeployment(2, "v1")
	deadline := int32(60)
	d.Spec.ProgressDeadlineSeconds = &deadline
	f := newFixture(t, d)
	f.sync()
	f.playReplicaSets(false)
	f.sync()
	f.clock.Step(30 * time.Second)
	f.sync()
	if c := cond(f.deployment(), progressingType); c == nil || c.Status != corev1.ConditionTrue {
		t.Fatalf("before deadline: %+v", c)
	}
	f.clock.Step(31 * time.Second)
	f.sync()
	c := cond(f.deployment(), progressingType)
	if c == nil || c.Status != corev1.ConditionFalse || c.Reason != reasonTimedOut {
		t.Fatalf("after deadline: %+v", c)
	}
	// Progress after the verdict ends it.
	f.playReplicaSets(true)
	f.sync()
	if c := cond(f.deployment(), progressingType); c == nil || c.Reason != reasonNewRSAvailable {
		t.Fatalf("after recovery: %+v", c)
	}
}

func TestAdoptsOrphanReplicaSet(t *testing.T) {
	d := newDeployment(2, "v1")
	tmpl := d.Spec.Template.DeepCopy()
	hash := podTemplateHash(tmpl, nil)
	tmpl.Labels[hashLabel] = hash
	two := int32(2)
	orphan := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-" + hash, Namespace: "default", UID: "orphan", Labels: tmpl.Labels,
			Annotations: map[string]string{revisionAnnotation: "1"}},
		Spec: appsv1.ReplicaSetSpec{Replicas: &two, Template: *tmpl,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web", hashLabel: hash}}},
	}
	f := newFixture(t, d, orphan)
	f.sync()
	rss := f.rss()
	if len(rss) != 1 {
		t.Fatalf("sets = %d, want the adopted one only", len(rss))
	}
	if ref := metav1.GetControllerOf(rss[0]); ref == nil || ref.UID != "d-uid" {
		t.Fatalf("not adopted: %+v", rss[0].OwnerReferences)
	}
}

func TestHashCollisionPicksAnotherName(t *testing.T) {
	d := newDeployment(1, "v1")
	hash := podTemplateHash(&d.Spec.Template, nil)
	// A set already holds the name, with another template and labels
	// outside the selector, so it is neither adopted nor reused.
	squatter := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web-" + hash, Namespace: "default", UID: "squatter",
		Labels: map[string]string{"app": "other"}}}
	f := newFixture(t, d, squatter)
	f.refresh()
	if err := f.c.sync(context.Background(), "default/web"); err == nil {
		t.Fatal("sync over a taken name returned no error")
	}
	if cc := f.deployment().Status.CollisionCount; cc == nil || *cc != 1 {
		t.Fatalf("collisionCount = %v, want 1", cc)
	}
	f.sync()
	var names []string
	for _, rs := range f.rss() {
		names = append(names, rs.Name)
	}
	one := int32(1)
	want := "web-" + podTemplateHash(&d.Spec.Template, &one)
	if len(names) != 2 || (names[0] != want && names[1] != want) {
		t.Fatalf("sets %v, want one named %s", names, want)
	}
}

// TestScaleMidRolloutIsProportional scales a Deployment while two
// versions run: both sets grow by their share, and the rollout then
// finishes at the new size.
func TestScaleMidRolloutIsProportional(t *testing.T) {
	d := newDeployment(10, "v1")
	surge, unav := intstr.FromInt32(2), intstr.FromInt32(2)
	d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxSurge: &surge, MaxUnavailable: &unav}
	f := newFixture(t, d)
	f.converge()
	f.updateDeployment(setImage("v2"))
	f.sync() // new set to 2 (surge)
	f.playReplicaSets(false)
	f.sync() // old set down by 2 (unavailable budget)
	rss := f.rss()
	oldN, newN := replicasOf(rss[0]), replicasOf(rss[1])
	if oldN != 8 || newN != 2 {
		t.Fatalf("mid-rollout old %d new %d, want 8 and 2", oldN, newN)
	}
	f.updateDeployment(func(d *appsv1.Deployment) { *d.Spec.Replicas = 20 })
	f.sync()
	rss = f.rss()
	oldN, newN = replicasOf(rss[0]), replicasOf(rss[1])
	// 10 more allowed pods (12 -> 22), split 8:2 of the old max 12.
	if oldN+newN != 22 || oldN <= 8 || newN <= 2 {
		t.Fatalf("after scale to 20: old %d new %d", oldN, newN)
	}
	f.converge()
	rss = f.rss()
	if replicasOf(rss[0]) != 0 || replicasOf(rss[1]) != 20 {
		t.Fatalf("final old %d new %d", replicasOf(rss[0]), replicasOf(rss[1]))
	}
}
