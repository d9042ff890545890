// Package nodelifecycle watches node heartbeats (Leases in kube-node-lease
// and the Ready condition), marks silent nodes Ready=Unknown with the
// node.kubernetes.io/unreachable:NoExecute taint, and evicts their pods
// once each pod's toleration of that taint runs out.
package nodelifecycle

import (
	"context"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	coordlisters "k8s.io/client-go/listers/coordination/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Defaults as the issue sets them (upstream: 40 s grace, 300 s toleration).
const (
	DefaultGracePeriod       = 40 * time.Second
	DefaultTolerationSeconds = 60
	DefaultMonitorPeriod     = 5 * time.Second
	LeaseNamespace           = corev1.NamespaceNodeLease
)

// Config tunes the controller.
type Config struct {
	GracePeriod       time.Duration
	TolerationSeconds int64
	MonitorPeriod     time.Duration
}

// Controller is the node lifecycle loop.
type Controller struct {
	client   kubernetes.Interface
	nodes    corelisters.NodeLister
	leases   coordlisters.LeaseLister
	pods     corelisters.PodLister
	synced   []cache.InformerSynced
	recorder record.EventRecorder
	clock    clock.WithTicker
	cfg      Config
	log      *slog.Logger
	// started is when this controller began: nodes get a full grace period
	// from then, since a new leader has not seen their heartbeats yet.
	started time.Time
}

// New builds the controller; zero Config fields take the defaults.
func New(client kubernetes.Interface, factory informers.SharedInformerFactory, recorder record.EventRecorder, clk clock.WithTicker, cfg Config, log *slog.Logger) *Controller {
	if cfg.GracePeriod == 0 {
		cfg.GracePeriod = DefaultGracePeriod
	}
	if cfg.TolerationSeconds == 0 {
		cfg.TolerationSeconds = DefaultTolerationSeconds
	}
	if cfg.MonitorPeriod == 0 {
		cfg.MonitorPeriod = DefaultMonitorPeriod
	}
	n, l, p := factory.Core().V1().Nodes(), factory.Coordination().V1().Leases(), factory.Core().V1().Pods()
	return &Controller{
		client: client, nodes: n.Lister(), leases: l.Lister(), pods: p.Lister(),
		synced:   []cache.InformerSynced{n.Informer().HasSynced, l.Informer().HasSynced, p.Informer().HasSynced},
		recorder: recorder, clock: clk, cfg: cfg, log: log,
	}
}

// Run checks every node each monitor period until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	c.started = c.clock.Now()
	t := c.clock.NewTicker(c.cfg.MonitorPeriod)
	defer t.Stop()
	for {
		c.MonitorOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// MonitorOnce is one pass over all nodes (exported for tests).
func (c *Controller) MonitorOnce(ctx context.Context) {
	if c.started.IsZero() {
		c.started = c.clock.Now()
	}
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return
	}
	for _, n := range nodes {
		if err := c.check(ctx, n); err != nil && !apierrors.IsNotFound(err) {
			c.log.Warn("node lifecycle", "node", n.Name, "err", err)
		}
	}
}

// lastHeartbeat is the newest sign of life: the Lease renewal or the Ready
// condition's heartbeat, else when the node (or this controller) started.
func (c *Controller) lastHeartbeat(n *corev1.Node) time.Time {
	last := n.CreationTimestamp.Time
	if lease, err := c.leases.Leases(LeaseNamespace).Get(n.Name); err == nil && lease.Spec.RenewTime != nil && lease.Spec.RenewTime.After(last) {
		last = lease.Spec.RenewTime.Time
	}
	if cond := readyCondition(n); cond != nil && cond.LastHeartbeatTime.After(last) {
		last = cond.LastHeartbeatTime.Time
	}
	if c.started.After(last) {
		last = c.started
	}
	return last
}

func readyCondition(n *corev1.Node) *corev1.NodeCondition {
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

var unreachable = corev1.Taint{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute}

func taintIndex(n *corev1.Node) int {
	for i, t := range n.Spec.Taints {
		if t.Key == unreachable.Key && t.Effect == unreachable.Effect {
			return i
		}
	}
	return -1
}

func (c *Controller) check(ctx context.Context, n *corev1.Node) error {
	now := c.clock.Now()
	silent := now.Sub(c.lastHeartbeat(n)) > c.cfg.GracePeriod
	ready := readyCondition(n)
	switch {
	case silent && (ready == nil || ready.Status != corev1.ConditionUnknown):
		if err := c.markUnknown(ctx, n, now); err != nil {
			return err
		}
		c.recorder.Eventf(n, corev1.EventTypeNormal, "NodeNotReady", "Node %s status is now: NodeNotReady", n.Name)
	case !silent && ready != nil && ready.Status == corev1.ConditionTrue && taintIndex(n) >= 0:
		// Back from the dead: lift the taint; pods not yet evicted stay.
		return c.setTaint(ctx, n, false, now)
	}
	if silent {
		// As upstream: the pods of a silent node stop being Ready, so Services
		// stop sending them new connections well before any eviction.
		if err := c.markPodsNotReady(ctx, n, now); err != nil {
			return err
		}
	}
	if silent && taintIndex(n) < 0 {
		if err := c.setTaint(ctx, n, true, now); err != nil {
			return err
		}
	}
	if i := taintIndex(n); i >= 0 {
		added := now
		if ta := n.Spec.Taints[i].TimeAdded; ta != nil {
			added = ta.Time
		}
		return c.evict(ctx, n, added, now)
	}
	return nil
}

// markPodsNotReady sets Ready False on the node's pods that still claim it.
func (c *Controller) markPodsNotReady(ctx context.Context, n *corev1.Node, now time.Time) error {
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		return err
	}
	for _, p := range pods {
		if p.Spec.NodeName != n.Name {
			continue
		}
		i := podReadyIndex(p)
		if i < 0 || p.Status.Conditions[i].Status == corev1.ConditionFalse {
			continue
		}
		next := p.DeepCopy()
		cond := &next.Status.Conditions[i]
		cond.Status, cond.LastTransitionTime = corev1.ConditionFalse, metav1.NewTime(now)
		cond.Reason, cond.Message = "NodeNotReady", "Node "+n.Name+" stopped posting status"
		_, err := c.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
	}
	return nil
}

func podReadyIndex(p *corev1.Pod) int {
	for i, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return i
		}
	}
	return -1
}

// markUnknown sets every condition the kubelet owns to Unknown, as upstream.
func (c *Controller) markUnknown(ctx context.Context, n *corev1.Node, now time.Time) error {
	next := n.DeepCopy()
	t := metav1.NewTime(now)
	types := []corev1.NodeConditionType{corev1.NodeReady, corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure}
	for _, ct := range types {
		found := false
		for i := range next.Status.Conditions {
			cond := &next.Status.Conditions[i]
			if cond.Type != ct {
				continue
			}
			found = true
			if cond.Status != corev1.ConditionUnknown {
				cond.Status, cond.LastTransitionTime = corev1.ConditionUnknown, t
			}
			cond.Reason, cond.Message = "NodeStatusUnknown", "Kubelet stopped posting node status."
		}
		if !found {
			next.Status.Conditions = append(next.Status.Conditions, corev1.NodeCondition{Type: ct, Status: corev1.ConditionUnknown,
				Reason: "NodeStatusNeverUpdated", Message: "Kubelet never posted node status.", LastTransitionTime: t, LastHeartbeatTime: t})
		}
	}
	_, err := c.client.CoreV1().Nodes().UpdateStatus(ctx, next, metav1.UpdateOptions{})
	return err
}

func (c *Controller) setTaint(ctx context.Context, n *corev1.Node, on bool, now time.Time) error {
	cur, err := c.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	next := cur.DeepCopy()
	i := taintIndex(next)
	switch {
	case on && i < 0:
		t := unreachable
		t.TimeAdded = &metav1.Time{Time: now}
		next.Spec.Taints = append(next.Spec.Taints, t)
	case !on && i >= 0:
		next.Spec.Taints = append(next.Spec.Taints[:i], next.Spec.Taints[i+1:]...)
	default:
		return nil
	}
	_, err = c.client.CoreV1().Nodes().Update(ctx, next, metav1.UpdateOptions{})
	return err
}

// evict deletes the node's pods whose toleration of the unreachable taint
// has run out. A pod without a matching toleration gets the default.
func (c *Controller) evict(ctx context.Context, n *corev1.Node, taintAdded, now time.Time) error {
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		return err
	}
	sel := fields.OneTermEqualSelector("spec.nodeName", n.Name)
	for _, p := range pods {
		if !sel.Matches(fields.Set{"spec.nodeName": p.Spec.NodeName}) || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		secs, forever := c.toleration(p)
		if forever || now.Before(taintAdded.Add(time.Duration(secs)*time.Second)) {
			continue
		}
		err := c.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
		c.recorder.Eventf(p, corev1.EventTypeNormal, "TaintManagerEviction", "Marking for deletion Pod %s/%s", p.Namespace, p.Name)
		c.log.Info("evicted pod from unreachable node", "pod", p.Namespace+"/"+p.Name, "node", n.Name)
	}
	return nil
}

// toleration returns how long p tolerates the unreachable taint, or
// forever when a toleration has no limit.
func (c *Controller) toleration(p *corev1.Pod) (int64, bool) {
	taint := unreachable
	for _, t := range p.Spec.Tolerations {
		if t.ToleratesTaint(klog.Background(), &taint, false) {
			if t.TolerationSeconds == nil {
				return 0, true
			}
			return *t.TolerationSeconds, false
		}
	}
	return c.cfg.TolerationSeconds, false
}
