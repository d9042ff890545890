// Package scheduler places pods on nodes: it filters out nodes that cannot
// run a pod, scores the rest, and binds the pod to the best through
// pods/binding.
package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
)

// Name is the schedulerName this scheduler serves (with the empty name).
const Name = "default-scheduler"

// Retry back-off for pods that fit nowhere or failed to bind; the cap makes
// the retry periodic even when no cluster event wakes the pod.
const (
	backoffBase = time.Second
	backoffMax  = time.Minute
)

// Scheduler binds pending pods to nodes.
type Scheduler struct {
	client     kubernetes.Interface
	recorder   record.EventRecorder
	clock      clock.WithTicker
	log        *slog.Logger
	logger     logr.Logger // for component-helpers, which log through logr
	queue      workqueue.TypedRateLimitingInterface[string]
	pods       corelisters.PodLister
	namespaces corelisters.NamespaceLister
	synced     []cache.InformerSynced

	// mu serialises decisions so that each sees the nodes as the previous
	// one left them, assumed pods included; binding runs outside it.
	mu    sync.Mutex
	cache *clusterCache
	rand  *rand.Rand
	// unschedulable maps pods that fit nowhere to whether pod (anti-)
	// affinity was among the reasons, which a new pod elsewhere can change.
	unschedulable map[string]bool
}

// New makes a scheduler on the factory's pod, node and namespace informers;
// the caller starts the factory, and Run starts the scheduler.
func New(client kubernetes.Interface, factory informers.SharedInformerFactory, recorder record.EventRecorder,
	clk clock.WithTicker, rnd *rand.Rand, log *slog.Logger) *Scheduler {
	s := &Scheduler{
		client: client, recorder: recorder, clock: clk, log: log,
		logger: logr.FromSlogHandler(log.Handler()),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](backoffBase, backoffMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "scheduler", Clock: clk}),
		cache:         newClusterCache(),
		rand:          rnd,
		unschedulable: map[string]bool{},
	}
	podInf := factory.Core().V1().Pods()
	nodeInf := factory.Core().V1().Nodes()
	nsInf := factory.Core().V1().Namespaces()
	s.pods, s.namespaces = podInf.Lister(), nsInf.Lister()
	podReg, _ := podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { s.podChanged(nil, obj.(*corev1.Pod)) },
		UpdateFunc: func(old, obj interface{}) { s.podChanged(old.(*corev1.Pod), obj.(*corev1.Pod)) },
		DeleteFunc: s.podDeleted,
	})
	nodeReg, _ := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { s.nodeChanged(nil, obj.(*corev1.Node)) },
		UpdateFunc: func(old, obj interface{}) { s.nodeChanged(old.(*corev1.Node), obj.(*corev1.Node)) },
		DeleteFunc: s.nodeDeleted,
	})
	s.synced = []cache.InformerSynced{podReg.HasSynced, nodeReg.HasSynced, nsInf.Informer().HasSynced}
	return s
}

// Run schedules pods until ctx ends. Decisions are taken one at a time;
// workers bounds how many bindings are in flight.
func (s *Scheduler) Run(ctx context.Context, workers int) {
	defer s.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return
	}
	for i := 0; i < workers; i++ {
		go func() {
			for s.next(ctx) {
			}
		}()
	}
	<-ctx.Done()
}

func responsible(pod *corev1.Pod) bool {
	return pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil &&
		(pod.Spec.SchedulerName == "" || pod.Spec.SchedulerName == Name) && !terminal(pod)
}

func terminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func (s *Scheduler) podChanged(old, pod *corev1.Pod) {
	key, err := cache.MetaNamespaceKeyFunc(pod)
	if err != nil {
		return
	}
	switch {
	case pod.Spec.NodeName != "" && !terminal(pod):
		s.mu.Lock()
		s.cache.setPod(pod)
		delete(s.unschedulable, key)
		s.mu.Unlock()
		if old == nil || old.Spec.NodeName == "" {
			// A newly placed pod can satisfy another's pod affinity.
			s.requeue(true)
		}
	case pod.Spec.NodeName != "":
		s.mu.Lock()
		s.cache.removePod(pod.UID)
		s.mu.Unlock()
		s.requeue(false)
	case responsible(pod):
		// Our own status writes (the PodScheduled condition) must not
		// retry the pod at once; spec and label changes may make it fit.
		if old != nil && equality.Semantic.DeepEqual(old.Spec, pod.Spec) && reflect.DeepEqual(old.Labels, pod.Labels) {
			return
		}
		s.queue.Add(key)
	}
}

func (s *Scheduler) podDeleted(obj interface{}) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key, _ := cache.MetaNamespaceKeyFunc(pod)
	s.mu.Lock()
	s.cache.removePod(pod.UID)
	delete(s.unschedulable, key)
	s.mu.Unlock()
	s.queue.Forget(key)
	if pod.Spec.NodeName != "" {
		s.requeue(false)
	}
}

func (s *Scheduler) nodeChanged(old, node *corev1.Node) {
	s.mu.Lock()
	s.cache.setNode(node)
	s.mu.Unlock()
	// Heartbeats rewrite node status every few seconds; only changes that
	// can make a pod fit are worth retrying pods for.
	if old == nil || !reflect.DeepEqual(old.Labels, node.Labels) ||
		!equality.Semantic.DeepEqual(old.Spec, node.Spec) ||
		!equality.Semantic.DeepEqual(old.Status.Allocatable, node.Status.Allocatable) ||
		ready(old) != ready(node) {
		s.requeue(false)
	}
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (s *Scheduler) nodeDeleted(obj interface{}) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if node, ok := obj.(*corev1.Node); ok {
		s.mu.Lock()
		s.cache.removeNode(node.Name)
		s.mu.Unlock()
	}
}

// requeue retries unschedulable pods now; onlyAffinity limits it to pods
// that failed on pod (anti-)affinity.
func (s *Scheduler) requeue(onlyAffinity bool) {
	s.mu.Lock()
	var keys []string
	for k, aff := range s.unschedulable {
		if aff || !onlyAffinity {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	for _, k := range keys {
		s.queue.Add(k)
	}
}

func (s *Scheduler) next(ctx context.Context) bool {
	key, quit := s.queue.Get()
	if quit {
		return false
	}
	defer s.queue.Done(key)
	s.process(ctx, key)
	return true
}

func (s *Scheduler) process(ctx context.Context, key string) {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := s.pods.Pods(ns).Get(name)
	if err != nil || !responsible(pod) {
		s.queue.Forget(key)
		s.mu.Lock()
		delete(s.unschedulable, key)
		s.mu.Unlock()
		return
	}
	d, err := s.decide(pod)
	if err != nil {
		s.log.Warn("schedule pod", "pod", key, "err", err)
		s.recorder.Eventf(pod, corev1.EventTypeWarning, "FailedScheduling", "%v", err)
		s.queue.AddRateLimited(key)
		return
	}
	switch {
	case d.skip:
		return
	case d.node == "":
		s.mu.Lock()
		s.unschedulable[key] = d.affinity
		s.mu.Unlock()
		s.markUnschedulable(ctx, pod, d.message)
		s.queue.AddRateLimited(key)
		return
	}
	if err := s.bind(ctx, pod, d.node); err != nil {
		s.mu.Lock()
		s.cache.forget(pod.UID)
		s.mu.Unlock()
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			// Deleted or bound elsewhere: the informer will tell us.
			s.queue.Forget(key)
			return
		}
		s.log.Warn("bind pod", "pod", key, "node", d.node, "err", err)
		s.recorder.Eventf(pod, corev1.EventTypeWarning, "FailedScheduling", "Binding rejected: %v", err)
		s.queue.AddRateLimited(key)
		return
	}
	s.queue.Forget(key)
	s.mu.Lock()
	delete(s.unschedulable, key)
	s.mu.Unlock()
	s.recorder.Eventf(pod, corev1.EventTypeNormal, "Scheduled", "Successfully assigned %s/%s to %s", pod.Namespace, pod.Name, d.node)
}

// decision is the outcome of one scheduling attempt.
type decision struct {
	node     string // empty when the pod fits nowhere
	message  string // why it fits nowhere
	affinity bool   // pod (anti-)affinity was among the reasons
	skip     bool   // already assumed; a binding is in flight
}

// decide picks a node and assumes the pod onto it, so that the next
// decision counts it before the informer reports the binding.
func (s *Scheduler) decide(pod *corev1.Pod) (decision, error) {
	pi := newPodInfo(pod)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache.isAssumed(pod.UID) {
		return decision{skip: true}, nil
	}
	nodes := s.cache.schedulable()
	cy, err := newCycle(pi, nodes, s.cache.imageNodes, s.namespaceLabels, s.logger)
	if err != nil {
		return decision{}, err
	}
	best, reasons := selectNode(cy, nodes, s.rand)
	if best == nil {
		d := decision{message: unschedulableMessage(len(nodes), reasons)}
		for _, r := range []string{reasonPodAffinity, reasonPodAntiAffinity, reasonExistingAntiAff} {
			d.affinity = d.affinity || reasons[r] > 0
		}
		return d, nil
	}
	s.cache.assume(pi, best.node.Name)
	return decision{node: best.node.Name}, nil
}

// selectNode returns the best feasible node, ties broken by rnd, or nil
// and the count of each reason nodes were filtered out.
func selectNode(cy *cycle, nodes []*nodeInfo, rnd *rand.Rand) (*nodeInfo, map[string]int) {
	reasons := map[string]int{}
	feasible := make([]*nodeInfo, 0, len(nodes))
	for _, n := range nodes {
		r := fit(cy, n)
		if len(r) == 0 {
			feasible = append(feasible, n)
			continue
		}
		for _, x := range r {
			reasons[x]++
		}
	}
	if len(feasible) == 0 {
		return nil, reasons
	}
	scores := totalScores(cy, feasible, len(nodes))
	var best []int
	for i, sc := range scores {
		switch {
		case len(best) == 0 || sc > scores[best[0]]:
			best = append(best[:0], i)
		case sc == scores[best[0]]:
			best = append(best, i)
		}
	}
	return feasible[best[rnd.IntN(len(best))]], nil
}

func (s *Scheduler) namespaceLabels(ns string) labels.Set {
	n, err := s.namespaces.Get(ns)
	if err != nil {
		return nil
	}
	return n.Labels
}

func (s *Scheduler) bind(ctx context.Context, pod *corev1.Pod, node string) error {
	b := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}
	if err := s.client.CoreV1().Pods(pod.Namespace).Bind(ctx, b, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("bind to %s: %w", node, err)
	}
	return nil
}

// markUnschedulable records why the pod waits: the PodScheduled condition
// (written only when it changes) and a FailedScheduling event.
func (s *Scheduler) markUnschedulable(ctx context.Context, pod *corev1.Pod, msg string) {
	s.recorder.Eventf(pod, corev1.EventTypeWarning, "FailedScheduling", "%s", msg)
	p := pod.DeepCopy()
	if !setCondition(p, corev1.PodCondition{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
		Reason: corev1.PodReasonUnschedulable, Message: msg,
	}, metav1.NewTime(s.clock.Now())) {
		return
	}
	_, err := s.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		s.log.Warn("update pod status", "pod", p.Namespace+"/"+p.Name, "err", err)
	}
}

// setCondition sets c on pod and reports whether anything changed.
func setCondition(pod *corev1.Pod, c corev1.PodCondition, now metav1.Time) bool {
	c.LastProbeTime = now
	c.LastTransitionTime = now
	for i := range pod.Status.Conditions {
		old := &pod.Status.Conditions[i]
		if old.Type != c.Type {
			continue
		}
		if old.Status == c.Status && old.Reason == c.Reason && old.Message == c.Message {
			return false
		}
		if old.Status == c.Status {
			c.LastTransitionTime = old.LastTransitionTime
		}
		*old = c
		return true
	}
	pod.Status.Conditions = append(pod.Status.Conditions, c)
	return true
}
