// Package replicaset keeps the number of pods a ReplicaSet asks for: it
// creates and deletes pods, adopts matching orphans, releases pods that stop
// matching, and reports replica counts in the ReplicaSet's status.
package replicaset

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/control/controllers/expectations"
	"github.com/capstan-net/capstan/control/controllers/worker"
)

// burstReplicas caps the pods created or deleted in one sync so that one
// huge ReplicaSet cannot monopolise a worker or the API server.
const burstReplicas = 500

// kind is what pods' controller references name.
func kind() schema.GroupVersionKind { return appsv1.SchemeGroupVersion.WithKind("ReplicaSet") }

// Controller is the ReplicaSet reconcile loop.
type Controller struct {
	client       kubernetes.Interface
	clock        clock.WithTicker
	log          *slog.Logger
	queue        workqueue.TypedRateLimitingInterface[string]
	rsLister     appslisters.ReplicaSetLister
	podLister    corelisters.PodLister
	synced       []cache.InformerSynced
	expectations *expectations.Expectations
}

// New makes the controller and registers its informers with factory; the
// caller starts the factory. Run starts the workers.
func New(client kubernetes.Interface, factory informers.SharedInformerFactory, clk clock.WithTicker, log *slog.Logger) *Controller {
	c := &Controller{
		client: client, clock: clk, log: log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "replicaset", Clock: clk}),
		expectations: expectations.New(clk),
	}
	rsInf := factory.Apps().V1().ReplicaSets()
	podInf := factory.Core().V1().Pods()
	c.rsLister = rsInf.Lister()
	c.podLister = podInf.Lister()
	c.synced = []cache.InformerSynced{rsInf.Informer().HasSynced, podInf.Informer().HasSynced}

	rsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj interface{}) { c.enqueue(obj) },
		DeleteFunc: func(obj interface{}) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				c.expectations.Forget(key)
				c.queue.Add(key)
			}
		},
	})
	podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.addPod,
		UpdateFunc: c.updatePod,
		DeleteFunc: c.deletePod,
	})
	return c
}

// Run processes ReplicaSets until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	worker.Run(ctx, c.queue, workers, c.synced, c.sync, c.log, "replicaset")
}

func (c *Controller) enqueue(obj interface{}) {
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		c.queue.Add(key)
	}
}

// owner returns the ReplicaSet that controls the pod, if it still exists
// under the same UID (a recreated namesake is not the owner).
func (c *Controller) owner(pod *corev1.Pod) *appsv1.ReplicaSet {
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != kind().Kind {
		return nil
	}
	rs, err := c.rsLister.ReplicaSets(pod.Namespace).Get(ref.Name)
	if err != nil || rs.UID != ref.UID {
		return nil
	}
	return rs
}

// matching lists the ReplicaSets whose selector takes the pod, so an
// orphan gets adopted.
func (c *Controller) matching(pod *corev1.Pod) []*appsv1.ReplicaSet {
	all, err := c.rsLister.ReplicaSets(pod.Namespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	var out []*appsv1.ReplicaSet
	for _, rs := range all {
		sel, err := metav1.LabelSelectorAsSelector(rs.Spec.Selector)
		if err != nil || sel.Empty() {
			continue
		}
		if sel.Matches(labels.Set(pod.Labels)) {
			out = append(out, rs)
		}
	}
	return out
}

func rsKey(rs *appsv1.ReplicaSet) string { return rs.Namespace + "/" + rs.Name }
func podKey(p *corev1.Pod) string        { return p.Namespace + "/" + p.Name }

func (c *Controller) addPod(obj interface{}) {
	pod := obj.(*corev1.Pod)
	if pod.DeletionTimestamp != nil {
		// Seen for the first time already terminating (e.g. after a
		// relist): it counts as a deletion, never as a creation.
		c.deletePod(pod)
		return
	}
	if metav1.GetControllerOf(pod) != nil {
		if rs := c.owner(pod); rs != nil {
			c.expectations.CreationObserved(rsKey(rs))
			c.queue.Add(rsKey(rs))
		}
		return
	}
	for _, rs := range c.matching(pod) {
		c.queue.Add(rsKey(rs))
	}
}

func (c *Controller) updatePod(oldObj, newObj interface{}) {
	old, cur := oldObj.(*corev1.Pod), newObj.(*corev1.Pod)
	if old.ResourceVersion == cur.ResourceVersion {
		return
	}
	if cur.DeletionTimestamp != nil && old.DeletionTimestamp == nil {
		// Graceful deletion: the pod stops counting now, not when the
		// kubelet finally removes it.
		c.deletePod(cur)
		if rs := c.owner(old); rs != nil {
			c.queue.Add(rsKey(rs))
		}
		return
	}
	oldRef, curRef := metav1.GetControllerOf(old), metav1.GetControllerOf(cur)
	if oldRef != nil && (curRef == nil || oldRef.UID != curRef.UID) {
		if rs := c.owner(old); rs != nil {
			c.queue.Add(rsKey(rs))
		}
	}
	if rs := c.owner(cur); rs != nil {
		c.queue.Add(rsKey(rs))
		// Availability ripens minReadySeconds after readiness without
		// any further event; look again then.
		if rs.Spec.MinReadySeconds > 0 && !podReady(old) && podReady(cur) {
			c.queue.AddAfter(rsKey(rs), time.Duration(rs.Spec.MinReadySeconds)*time.Second+time.Second)
		}
		return
	}
	if curRef == nil {
		for _, rs := range c.matching(cur) {
			c.queue.Add(rsKey(rs))
		}
	}
}

func (c *Controller) deletePod(obj interface{}) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		tomb, ok := obj.(cache.DeletedFinalStateUnknown)
		if !ok {
			return
		}
		if pod, ok = tomb.Obj.(*corev1.Pod); !ok {
			return
		}
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != kind().Kind {
		return
	}
	key := pod.Namespace + "/" + ref.Name
	c.expectations.DeletionObserved(key, podKey(pod))
	c.queue.Add(key)
}

// sync brings one ReplicaSet's pods to spec.replicas and writes its
// status. Every step reads current state first, so it is safe to repeat
// after a crash anywhere in the middle.
func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	cached, err := c.rsLister.ReplicaSets(ns).Get(name)
	if apierrors.IsNotFound(err) {
		c.expectations.Forget(key)
		return nil
	}
	if err != nil {
		return err
	}
	rs := cached.DeepCopy()
	sel, err := metav1.LabelSelectorAsSelector(rs.Spec.Selector)
	if err != nil || sel.Empty() {
		// An invalid or empty selector would take every pod in the
		// namespace; validation should have refused it.
		c.log.Warn("replicaset has unusable selector", "replicaset", key, "err", err)
		return nil
	}
	needsManage := c.expectations.Satisfied(key) && rs.DeletionTimestamp == nil

	all, err := c.podLister.Pods(ns).List(labels.Everything())
	if err != nil {
		return err
	}
	pods, err := c.claimPods(ctx, rs, sel, activePods(all))
	if err != nil {
		return err
	}
	var manageErr error
	if needsManage {
		pods, manageErr = c.manage(ctx, key, rs, pods)
	}
	if err := c.updateStatus(ctx, rs, pods, manageErr); err != nil {
		return err
	}
	return manageErr
}

// activePods drops pods that no longer count: finished or terminating.
func activePods(pods []*corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			out = append(out, p)
		}
	}
	return out
}

// claimPods returns the pods the ReplicaSet owns after adopting matching
// orphans and releasing owned pods that no longer match.
func (c *Controller) claimPods(ctx context.Context, rs *appsv1.ReplicaSet, sel labels.Selector, pods []*corev1.Pod) ([]*corev1.Pod, error) {
	var owned []*corev1.Pod
	var errs []error
	adoptChecked := false
	canAdopt := true
	for _, p := range pods {
		ref := metav1.GetControllerOf(p)
		matches := sel.Matches(labels.Set(p.Labels))
		switch {
		case ref != nil && ref.UID == rs.UID:
			if matches {
				owned = append(owned, p)
				continue
			}
			if rs.DeletionTimestamp != nil {
				continue
			}
			if err := c.release(ctx, rs, p); err != nil {
				errs = append(errs, err)
			}
		case ref == nil && matches && rs.DeletionTimestamp == nil:
			if !adoptChecked {
				// The cached ReplicaSet may have been deleted and
				// recreated; adopting for a dead UID would orphan the
				// pod again at once.
				adoptChecked = true
				fresh, err := c.client.AppsV1().ReplicaSets(rs.Namespace).Get(ctx, rs.Name, metav1.GetOptions{})
				canAdopt = err == nil && fresh.UID == rs.UID && fresh.DeletionTimestamp == nil
			}
			if !canAdopt {
				continue
			}
			adopted, err := c.adopt(ctx, rs, p)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if adopted {
				owned = append(owned, p)
			}
		}
	}
	return owned, errors.Join(errs...)
}

func (c *Controller) adopt(ctx context.Context, rs *appsv1.ReplicaSet, p *corev1.Pod) (bool, error) {
	// The pod UID in the patch is a precondition: a pod recreated under
	// the same name is a different pod and must not be adopted blindly.
	patch := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":%q,"kind":%q,"name":%q,"uid":%q,"controller":true,"blockOwnerDeletion":true}],"uid":%q}}`,
		kind().GroupVersion().String(), kind().Kind, rs.Name, rs.UID, p.UID)
	_, err := c.client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsConflict(err) {
		// Gone, or owned by someone else meanwhile (the server refuses a
		// second controller reference): not ours.
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("adopt pod %s: %w", p.Name, err)
	}
	return true, nil
}

func (c *Controller) release(ctx context.Context, rs *appsv1.ReplicaSet, p *corev1.Pod) error {
	patch := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"$patch":"delete","uid":%q}],"uid":%q}}`, rs.UID, p.UID)
	_, err := c.client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release pod %s: %w", p.Name, err)
	}
	return nil
}

// manage creates or deletes pods and returns the pods that still count, so
// the status written right after does not report pods being deleted.
func (c *Controller) manage(ctx context.Context, key string, rs *appsv1.ReplicaSet, pods []*corev1.Pod) ([]*corev1.Pod, error) {
	want := 1
	if rs.Spec.Replicas != nil {
		want = int(*rs.Spec.Replicas)
	}
	diff := len(pods) - want
	switch {
	case diff < 0:
		n := min(-diff, burstReplicas)
		c.expectations.ExpectCreations(key, n)
		created, err := slowStart(n, func() error { return c.createPod(ctx, rs) })
		// Failed and never-attempted creates produce no informer event.
		for i := created; i < n; i++ {
			c.expectations.CreationObserved(key)
		}
		if err != nil {
			return pods, err
		}
	case diff > 0:
		n := min(diff, burstReplicas)
		victims := append([]*corev1.Pod(nil), pods...)
		sort.SliceStable(victims, func(i, j int) bool { return deleteFirst(victims[i], victims[j]) })
		victims = victims[:n]
		keys := make([]string, len(victims))
		for i, p := range victims {
			keys[i] = podKey(p)
		}
		c.expectations.ExpectDeletions(key, keys)
		gone := map[string]bool{}
		var errs []error
		for _, p := range victims {
			err := c.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				c.expectations.DeletionObserved(key, podKey(p))
				errs = append(errs, fmt.Errorf("delete pod %s: %w", p.Name, err))
				continue
			}
			gone[p.Name] = true
		}
		var left []*corev1.Pod
		for _, p := range pods {
			if !gone[p.Name] {
				left = append(left, p)
			}
		}
		return left, errors.Join(errs...)
	}
	return pods, nil
}

// slowStart runs fn n times in batches of 1, 2, 4, ... in parallel and
// stops after a batch with a failure, so a template the server refuses
// (quota, admission) costs a few calls rather than n. It returns how many
// calls succeeded.
func slowStart(n int, fn func() error) (int, error) {
	done := 0
	for batch := 1; done < n; batch *= 2 {
		batch = min(batch, n-done)
		errs := make(chan error, batch)
		var wg sync.WaitGroup
		for i := 0; i < batch; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := fn(); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		var failed []error
		for err := range errs {
			failed = append(failed, err)
		}
		done += batch - len(failed)
		if len(failed) > 0 {
			return done, errors.Join(failed...)
		}
	}
	return done, nil
}

func (c *Controller) createPod(ctx context.Context, rs *appsv1.ReplicaSet) error {
	tmpl := rs.Spec.Template.DeepCopy()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    rs.Name + "-",
			Namespace:       rs.Namespace,
			Labels:          tmpl.Labels,
			Annotations:     tmpl.Annotations,
			Finalizers:      tmpl.Finalizers,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, kind())},
		},
		Spec: tmpl.Spec,
	}
	_, err := c.client.CoreV1().Pods(rs.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod for %s: %w", rs.Name, err)
	}
	return nil
}

// deleteFirst orders pods for scale-down: the cheapest to lose first.
// Unscheduled pods do no work yet, pending and not-ready pods serve no
// traffic, and among ready pods the newest has the least warmed state.
func deleteFirst(a, b *corev1.Pod) bool {
	if (a.Spec.NodeName == "") != (b.Spec.NodeName == "") {
		return a.Spec.NodeName == ""
	}
	if ra, rb := phaseRank(a.Status.Phase), phaseRank(b.Status.Phase); ra != rb {
		return ra < rb
	}
	if podReady(a) != podReady(b) {
		return !podReady(a)
	}
	if podReady(a) {
		ta, tb := readySince(a), readySince(b)
		if !ta.Equal(tb) {
			return ta.After(tb)
		}
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return b.CreationTimestamp.Before(&a.CreationTimestamp)
	}
	return a.Name > b.Name
}

func phaseRank(p corev1.PodPhase) int {
	switch p {
	case corev1.PodPending:
		return 0
	case corev1.PodUnknown:
		return 1
	}
	return 2
}

func readyCondition(p *corev1.Pod) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == corev1.PodReady {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	c := readyCondition(p)
	return c != nil && c.Status == corev1.ConditionTrue
}

func readySince(p *corev1.Pod) time.Time {
	if c := readyCondition(p); c != nil {
		return c.LastTransitionTime.Time
	}
	return time.Time{}
}

// available: ready for at least minReadySeconds.
func available(p *corev1.Pod, minReady int32, now time.Time) bool {
	if !podReady(p) {
		return false
	}
	if minReady == 0 {
		return true
	}
	since := readySince(p)
	return !since.IsZero() && !since.Add(time.Duration(minReady)*time.Second).After(now)
}

// updateStatus writes the counts derived from pods; it also schedules a
// look when a ready pod will become available.
func (c *Controller) updateStatus(ctx context.Context, rs *appsv1.ReplicaSet, pods []*corev1.Pod, manageErr error) error {
	now := c.clock.Now()
	st := rs.Status.DeepCopy()
	st.Replicas = int32(len(pods))
	st.FullyLabeledReplicas, st.ReadyReplicas, st.AvailableReplicas = 0, 0, 0
	fullLabels := labels.SelectorFromSet(rs.Spec.Template.Labels)
	var ripening time.Duration
	for _, p := range pods {
		if fullLabels.Matches(labels.Set(p.Labels)) {
			st.FullyLabeledReplicas++
		}
		if podReady(p) {
			st.ReadyReplicas++
			if available(p, rs.Spec.MinReadySeconds, now) {
				st.AvailableReplicas++
			} else if d := readySince(p).Add(time.Duration(rs.Spec.MinReadySeconds) * time.Second).Sub(now); ripening == 0 || d < ripening {
				ripening = d
			}
		}
	}
	st.ObservedGeneration = rs.Generation
	setFailureCondition(st, manageErr, now)
	if ripening > 0 {
		c.queue.AddAfter(rsKey(rs), ripening)
	}
	if apiequality.Semantic.DeepEqual(*st, rs.Status) {
		return nil
	}
	rs.Status = *st
	_, err := c.client.AppsV1().ReplicaSets(rs.Namespace).UpdateStatus(ctx, rs, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("update status of %s: %w", rs.Name, err)
	}
	return nil
}

// setFailureCondition reports a failed create or delete as ReplicaFailure
// so users see quota or admission refusals without reading logs.
func setFailureCondition(st *appsv1.ReplicaSetStatus, err error, now time.Time) {
	var keep []appsv1.ReplicaSetCondition
	for _, c := range st.Conditions {
		if c.Type != appsv1.ReplicaSetReplicaFailure {
			keep = append(keep, c)
		}
	}
	if err != nil {
		keep = append(keep, appsv1.ReplicaSetCondition{
			Type: appsv1.ReplicaSetReplicaFailure, Status: corev1.ConditionTrue,
			LastTransitionTime: metav1.NewTime(now), Reason: "FailedReplicaChange", Message: err.Error(),
		})
		for _, c := range st.Conditions {
			if c.Type == appsv1.ReplicaSetReplicaFailure && c.Message == err.Error() {
				keep[len(keep)-1].LastTransitionTime = c.LastTransitionTime
			}
		}
	}
	st.Conditions = keep
}
