// Package daemonset runs one pod of each DaemonSet on every eligible node:
// it creates pods pinned to new or newly eligible nodes, deletes pods on
// nodes that are gone or no longer eligible and duplicates, adopts matching
// orphans and releases pods that stop matching, replaces pods
// of an old template within maxUnavailable, and reports the counts in the
// DaemonSet's status.
package daemonset

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
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

// burstReplicas caps the pods created or deleted in one sync, as upstream
// does, so a DaemonSet on a large cluster cannot monopolise a worker.
const burstReplicas = 250

func kind() schema.GroupVersionKind { return appsv1.SchemeGroupVersion.WithKind("DaemonSet") }

// Controller is the DaemonSet reconcile loop.
type Controller struct {
	client       kubernetes.Interface
	clock        clock.WithTicker
	log          *slog.Logger
	logr         logr.Logger // for the component-helpers taint functions
	queue        workqueue.TypedRateLimitingInterface[string]
	dsLister     appslisters.DaemonSetLister
	podLister    corelisters.PodLister
	nodeLister   corelisters.NodeLister
	synced       []cache.InformerSynced
	expectations *expectations.Expectations
	backoff      *failedBackoff
}

// New makes the controller and registers its informers with factory; the
// caller starts the factory. Run starts the workers.
func New(client kubernetes.Interface, factory informers.SharedInformerFactory, clk clock.WithTicker, log *slog.Logger) *Controller {
	c := &Controller{
		client: client, clock: clk, log: log, logr: logr.FromSlogHandler(log.Handler()),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "daemonset", Clock: clk}),
		expectations: expectations.New(clk),
		backoff:      newFailedBackoff(clk),
	}
	dsInf := factory.Apps().V1().DaemonSets()
	podInf := factory.Core().V1().Pods()
	nodeInf := factory.Core().V1().Nodes()
	c.dsLister = dsInf.Lister()
	c.podLister = podInf.Lister()
	c.nodeLister = nodeInf.Lister()
	c.synced = []cache.InformerSynced{dsInf.Informer().HasSynced, podInf.Informer().HasSynced, nodeInf.Informer().HasSynced}

	dsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj interface{}) { c.enqueue(obj) },
		DeleteFunc: func(obj interface{}) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				c.expectations.Forget(key)
				c.backoff.forget(key)
				c.queue.Add(key)
			}
		},
	})
	podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.addPod,
		UpdateFunc: c.updatePod,
		DeleteFunc: c.deletePod,
	})
	nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.addNode,
		UpdateFunc: c.updateNode,
		DeleteFunc: c.deleteNode,
	})
	return c
}

// Any node change may concern every DaemonSet; the syncs are cheap reads
// of the caches when nothing needs doing.
func (c *Controller) addNode(interface{})    { c.enqueueAll() }
func (c *Controller) deleteNode(interface{}) { c.enqueueAll() }

// updateNode ignores the status heartbeats that make up most node updates:
// only labels and taints decide eligibility.
func (c *Controller) updateNode(oldObj, newObj interface{}) {
	old, cur := oldObj.(*corev1.Node), newObj.(*corev1.Node)
	if !apiequality.Semantic.DeepEqual(old.Labels, cur.Labels) ||
		!apiequality.Semantic.DeepEqual(old.Spec.Taints, cur.Spec.Taints) {
		c.enqueueAll()
	}
}

// Run processes DaemonSets until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	worker.Run(ctx, c.queue, workers, c.synced, c.sync, c.log, "daemonset")
}

func (c *Controller) enqueue(obj interface{}) {
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		c.queue.Add(key)
	}
}

func (c *Controller) enqueueAll() {
	all, err := c.dsLister.List(labels.Everything())
	if err != nil {
		return
	}
	for _, ds := range all {
		c.queue.Add(dsKey(ds))
	}
}

func dsKey(ds *appsv1.DaemonSet) string { return ds.Namespace + "/" + ds.Name }
func podKey(p *corev1.Pod) string       { return p.Namespace + "/" + p.Name }

// ownerKey names the DaemonSet a pod's controller reference points at.
func ownerKey(pod *corev1.Pod) (string, bool) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != kind().Kind || ref.APIVersion != kind().GroupVersion().String() {
		return "", false
	}
	return pod.Namespace + "/" + ref.Name, true
}

func (c *Controller) addPod(obj interface{}) {
	pod := obj.(*corev1.Pod)
	if pod.DeletionTimestamp != nil {
		// Seen first already terminating (e.g. after a relist): a
		// deletion, never a creation.
		c.deletePod(pod)
		return
	}
	if key, ok := ownerKey(pod); ok {
		c.expectations.CreationObserved(key)
		c.queue.Add(key)
		return
	}
	if metav1.GetControllerOf(pod) == nil {
		c.enqueueMatching(pod)
	}
}

// enqueueMatching queues the DaemonSets whose selector takes an orphan, so
// it gets adopted.
func (c *Controller) enqueueMatching(pod *corev1.Pod) {
	all, err := c.dsLister.DaemonSets(pod.Namespace).List(labels.Everything())
	if err != nil {
		return
	}
	for _, ds := range all {
		sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
		if err == nil && !sel.Empty() && sel.Matches(labels.Set(pod.Labels)) {
			c.queue.Add(dsKey(ds))
		}
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
		return
	}
	if key, ok := ownerKey(old); ok {
		c.queue.Add(key)
	}
	key, ok := ownerKey(cur)
	if !ok {
		if metav1.GetControllerOf(cur) == nil {
			c.enqueueMatching(cur)
		}
		return
	}
	c.queue.Add(key)
	// Availability ripens minReadySeconds after readiness without any
	// further event; look again then.
	if ds, err := c.dsLister.DaemonSets(cur.Namespace).Get(metav1.GetControllerOf(cur).Name); err == nil &&
		ds.Spec.MinReadySeconds > 0 && !podReady(old) && podReady(cur) {
		c.queue.AddAfter(key, time.Duration(ds.Spec.MinReadySeconds)*time.Second+time.Second)
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
	if key, ok := ownerKey(pod); ok {
		c.expectations.DeletionObserved(key, podKey(pod))
		c.queue.Add(key)
	}
}

// nodeState is what the DaemonSet looks like on one node.
type nodeState struct {
	node           *corev1.Node
	shouldRun      bool
	shouldContinue bool
	pods           []*corev1.Pod // active pods, oldest first
	failed         []*corev1.Pod
}

// plan is what one sync will change.
type plan struct {
	create []string // node names
	delete []*corev1.Pod
	// retryAfter asks for another look when a failed pod's backoff ends.
	retryAfter time.Duration
}

// sync brings one DaemonSet's pods in line with the nodes and writes its
// status. Each step reads current state first, so it is safe to repeat
// after a crash anywhere in the middle.
func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	cached, err := c.dsLister.DaemonSets(ns).Get(name)
	if apierrors.IsNotFound(err) {
		c.expectations.Forget(key)
		return nil
	}
	if err != nil {
		return err
	}
	ds := cached.DeepCopy()
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() {
		// Validation should have refused it; an empty selector would
		// claim every pod in the namespace.
		c.log.Warn("daemonset has unusable selector", "daemonset", key, "err", err)
		return nil
	}
	hash, err := templateHash(ds)
	if err != nil {
		return err
	}
	nodes, err := c.nodeLister.List(labels.Everything())
	if err != nil {
		return err
	}
	pods, err := c.podLister.Pods(ns).List(labels.Everything())
	if err != nil {
		return err
	}
	owned, claimErr := c.claimPods(ctx, ds, sel, pods)
	states, stray := c.group(ds, nodes, owned)

	var manageErr error
	if c.expectations.Satisfied(key) && ds.DeletionTimestamp == nil {
		p := c.plan(key, ds, hash, states, stray)
		manageErr = c.execute(ctx, key, ds, hash, p)
		if p.retryAfter > 0 {
			c.queue.AddAfter(key, p.retryAfter)
		}
		// The status written next must not count pods just deleted.
		gone := map[string]bool{}
		for _, pod := range p.delete {
			gone[pod.Name] = true
		}
		for _, st := range states {
			st.pods = without(st.pods, gone)
		}
	}
	if err := c.updateStatus(ctx, ds, hash, states); err != nil {
		return err
	}
	return errors.Join(claimErr, manageErr)
}

func without(pods []*corev1.Pod, gone map[string]bool) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pods {
		if !gone[p.Name] {
			out = append(out, p)
		}
	}
	return out
}

// claimPods returns the live pods the DaemonSet controls after adopting
// matching orphans and releasing owned pods that no longer match, as every
// upstream workload controller does.
func (c *Controller) claimPods(ctx context.Context, ds *appsv1.DaemonSet, sel labels.Selector, pods []*corev1.Pod) ([]*corev1.Pod, error) {
	var owned []*corev1.Pod
	var errs []error
	adoptChecked, canAdopt := false, false
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue
		}
		ref := metav1.GetControllerOf(p)
		matches := sel.Matches(labels.Set(p.Labels))
		switch {
		case ref != nil && ref.UID == ds.UID:
			if matches || ds.DeletionTimestamp != nil {
				owned = append(owned, p)
				continue
			}
			if err := c.patchOwner(ctx, p, fmt.Sprintf(`{"metadata":{"ownerReferences":[{"$patch":"delete","uid":%q}],"uid":%q}}`, ds.UID, p.UID)); err != nil {
				errs = append(errs, fmt.Errorf("release pod %s: %w", p.Name, err))
			}
		case ref == nil && matches && ds.DeletionTimestamp == nil:
			if !adoptChecked {
				// The cached DaemonSet may have been deleted and
				// recreated; adopting for a dead UID would orphan the
				// pod again at once.
				adoptChecked = true
				fresh, err := c.client.AppsV1().DaemonSets(ds.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
				canAdopt = err == nil && fresh.UID == ds.UID && fresh.DeletionTimestamp == nil
			}
			if !canAdopt {
				continue
			}
			// The pod UID in the patch is a precondition: a namesake
			// recreated meanwhile must not be adopted blindly.
			patch := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":%q,"kind":%q,"name":%q,"uid":%q,"controller":true,"blockOwnerDeletion":true}],"uid":%q}}`,
				kind().GroupVersion().String(), kind().Kind, ds.Name, ds.UID, p.UID)
			if err := c.patchOwner(ctx, p, patch); err != nil {
				errs = append(errs, fmt.Errorf("adopt pod %s: %w", p.Name, err))
				continue
			}
			adopted := p.DeepCopy()
			adopted.OwnerReferences = append(adopted.OwnerReferences, *metav1.NewControllerRef(ds, kind()))
			owned = append(owned, adopted)
		}
	}
	return owned, errors.Join(errs...)
}

// patchOwner applies an ownerReference patch. A pod gone, recreated, or
// taken by another controller meanwhile (the server refuses a second
// controller reference) is simply not ours, which is no error.
func (c *Controller) patchOwner(ctx context.Context, p *corev1.Pod, patch string) error {
	_, err := c.client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if err == nil || apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

// group sorts the DaemonSet's pods by target node. Pods aimed at nodes that
// no longer exist (or at none) are returned as stray.
func (c *Controller) group(ds *appsv1.DaemonSet, nodes []*corev1.Node, pods []*corev1.Pod) (map[string]*nodeState, []*corev1.Pod) {
	tp := templatePod(ds)
	states := make(map[string]*nodeState, len(nodes))
	for _, n := range nodes {
		run, cont := fit(tp, n, c.logr)
		states[n.Name] = &nodeState{node: n, shouldRun: run, shouldContinue: cont}
	}
	var stray []*corev1.Pod
	for _, p := range pods {
		ref := metav1.GetControllerOf(p)
		if ref == nil || ref.UID != ds.UID || p.DeletionTimestamp != nil {
			continue
		}
		st, ok := states[targetNode(p)]
		switch {
		case !ok:
			stray = append(stray, p)
		case p.Status.Phase == corev1.PodFailed:
			st.failed = append(st.failed, p)
		case p.Status.Phase == corev1.PodSucceeded:
			// A daemon that exits is replaced like a failed one.
			st.failed = append(st.failed, p)
		default:
			st.pods = append(st.pods, p)
		}
	}
	for _, st := range states {
		sort.SliceStable(st.pods, func(i, j int) bool { return olderFirst(st.pods[i], st.pods[j]) })
	}
	return states, stray
}

// olderFirst keeps the pod that has done the most: ready before not, then
// the oldest, so duplicates lose their newest copy.
func olderFirst(a, b *corev1.Pod) bool {
	if podReady(a) != podReady(b) {
		return podReady(a)
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// plan decides creations and deletions: missing pods, misplaced pods,
// duplicates, failed pods, and the rolling update's share of old pods.
func (c *Controller) plan(key string, ds *appsv1.DaemonSet, hash string, states map[string]*nodeState, stray []*corev1.Pod) plan {
	var p plan
	p.delete = append(p.delete, stray...)
	names := make([]string, 0, len(states))
	for n := range states {
		names = append(names, n)
	}
	sort.Strings(names) // deterministic order, so bursts resume where they stopped
	for _, n := range names {
		st := states[n]
		if len(st.failed) > 0 && st.shouldRun && len(st.pods) == 0 {
			if wait := c.backoff.wait(key + "|" + n); wait > 0 {
				// The failed pod keeps the node's place until its
				// backoff ends, so nothing is created meanwhile.
				if p.retryAfter == 0 || wait < p.retryAfter {
					p.retryAfter = wait
				}
				continue
			}
			// Its deletion event brings the next sync, which creates
			// the replacement, as upstream does.
			p.delete = append(p.delete, st.failed...)
			continue
		}
		// Finished pods beside a live one, or on a node the DaemonSet
		// has left, only take a name and a row in listings.
		p.delete = append(p.delete, st.failed...)
		switch {
		case st.shouldRun && len(st.pods) == 0:
			p.create = append(p.create, n)
		case st.shouldContinue && len(st.pods) > 1:
			p.delete = append(p.delete, st.pods[1:]...)
		case !st.shouldContinue:
			p.delete = append(p.delete, st.pods...)
		}
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.OnDeleteDaemonSetStrategyType {
		p.delete = append(p.delete, c.rollingDeletes(ds, hash, names, states)...)
	}
	return p
}

// maxUnavailable resolves the rolling update budget against the number of
// nodes that should run a pod; it is at least 1 so an update always moves.
func maxUnavailable(ds *appsv1.DaemonSet, desired int) int {
	v := intstr.FromInt32(1)
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil {
		v = *ru.MaxUnavailable
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(&v, desired, true)
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// rollingDeletes picks old-template pods to delete, following upstream:
// old pods that are unavailable anyway go at once; available ones only
// while the number of unavailable nodes stays within maxUnavailable.
// Nodes missing a pod or holding duplicates count as unavailable.
func (c *Controller) rollingDeletes(ds *appsv1.DaemonSet, hash string, names []string, states map[string]*nodeState) []*corev1.Pod {
	now := c.clock.Now()
	desired := 0
	for _, st := range states {
		if st.shouldRun {
			desired++
		}
	}
	budget := maxUnavailable(ds, desired)
	unavailable := 0
	var free, candidates []*corev1.Pod
	for _, n := range names {
		st := states[n]
		if !st.shouldRun {
			continue
		}
		if len(st.pods) != 1 {
			unavailable++
			continue
		}
		pod := st.pods[0]
		switch {
		case pod.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] == hash:
			if !available(pod, ds.Spec.MinReadySeconds, now) {
				unavailable++
			}
		case !available(pod, ds.Spec.MinReadySeconds, now):
			free = append(free, pod)
		default:
			candidates = append(candidates, pod)
		}
	}
	room := min(max(budget-unavailable, 0), len(candidates))
	return append(free, candidates[:room]...)
}

// execute carries out the plan within burstReplicas, recording
// expectations first so that the informer's lag cannot cause repeats.
func (c *Controller) execute(ctx context.Context, key string, ds *appsv1.DaemonSet, hash string, p plan) error {
	create := p.create[:min(len(p.create), burstReplicas)]
	del := dedupe(p.delete)
	del = del[:min(len(del), burstReplicas)]
	if len(create) == 0 && len(del) == 0 {
		return nil
	}
	keys := make([]string, len(del))
	for i, pod := range del {
		keys[i] = podKey(pod)
	}
	c.expectations.Expect(key, len(create), keys)

	var errs []error
	for _, pod := range del {
		err := c.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			// No informer event will come for a delete that failed.
			c.expectations.DeletionObserved(key, podKey(pod))
			errs = append(errs, fmt.Errorf("delete pod %s: %w", pod.Name, err))
		}
	}
	for i, node := range create {
		if err := c.createPod(ctx, ds, hash, node); err != nil {
			// Failed and never-attempted creates produce no event. One
			// refusal (quota, admission) will repeat, so stop here.
			for range create[i:] {
				c.expectations.CreationObserved(key)
			}
			errs = append(errs, err)
			break
		}
	}
	return errors.Join(errs...)
}

func dedupe(pods []*corev1.Pod) []*corev1.Pod {
	seen := map[string]bool{}
	var out []*corev1.Pod
	for _, p := range pods {
		if !seen[p.Name] {
			seen[p.Name] = true
			out = append(out, p)
		}
	}
	return out
}

func (c *Controller) createPod(ctx context.Context, ds *appsv1.DaemonSet, hash, node string) error {
	tmpl := ds.Spec.Template.DeepCopy()
	lbls := make(map[string]string, len(tmpl.Labels)+1)
	for k, v := range tmpl.Labels {
		lbls[k] = v
	}
	lbls[appsv1.DefaultDaemonSetUniqueLabelKey] = hash
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    ds.Name + "-",
			Namespace:       ds.Namespace,
			Labels:          lbls,
			Annotations:     tmpl.Annotations,
			Finalizers:      tmpl.Finalizers,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(ds, kind())},
		},
		Spec: tmpl.Spec,
	}
	addDaemonTolerations(&pod.Spec)
	pinToNode(&pod.Spec, node)
	if _, err := c.client.CoreV1().Pods(ds.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod for %s on %s: %w", ds.Name, node, err)
	}
	return nil
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

// available: ready for at least minReadySeconds.
func available(p *corev1.Pod, minReady int32, now time.Time) bool {
	c := readyCondition(p)
	if c == nil || c.Status != corev1.ConditionTrue {
		return false
	}
	if minReady == 0 {
		return true
	}
	// An unknown transition time proves nothing about how long it has
	// been ready, as upstream judges it.
	return !c.LastTransitionTime.IsZero() && !c.LastTransitionTime.Add(time.Duration(minReady)*time.Second).After(now)
}

// updateStatus writes the per-node counts. Like upstream it judges each
// node by its oldest pod, and it schedules a look for when a ready pod will
// become available.
func (c *Controller) updateStatus(ctx context.Context, ds *appsv1.DaemonSet, hash string, states map[string]*nodeState) error {
	now := c.clock.Now()
	st := ds.Status.DeepCopy()
	st.DesiredNumberScheduled, st.CurrentNumberScheduled, st.NumberMisscheduled = 0, 0, 0
	st.NumberReady, st.NumberAvailable, st.UpdatedNumberScheduled = 0, 0, 0
	var ripening time.Duration
	for _, s := range states {
		if !s.shouldRun {
			if len(s.pods) > 0 {
				st.NumberMisscheduled++
			}
			continue
		}
		st.DesiredNumberScheduled++
		if len(s.pods) == 0 {
			continue
		}
		st.CurrentNumberScheduled++
		pod := s.pods[0]
		if podReady(pod) {
			st.NumberReady++
			if available(pod, ds.Spec.MinReadySeconds, now) {
				st.NumberAvailable++
			} else if d := readyCondition(pod).LastTransitionTime.Add(time.Duration(ds.Spec.MinReadySeconds) * time.Second).Sub(now); d > 0 && (ripening == 0 || d < ripening) {
				ripening = d
			}
		}
		if pod.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] == hash {
			st.UpdatedNumberScheduled++
		}
	}
	st.NumberUnavailable = max(st.DesiredNumberScheduled-st.NumberAvailable, 0)
	st.ObservedGeneration = ds.Generation
	if ripening > 0 {
		c.queue.AddAfter(dsKey(ds), ripening)
	}
	if apiequality.Semantic.DeepEqual(*st, ds.Status) {
		return nil
	}
	ds.Status = *st
	_, err := c.client.AppsV1().DaemonSets(ds.Namespace).UpdateStatus(ctx, ds, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("update status of %s: %w", ds.Name, err)
	}
	return nil
}
