// Package nodeipam gives every Node a pod CIDR (spec.podCIDR/podCIDRs)
// carved from the cluster CIDR, like kube-controller-manager's range
// allocator. One worker hands out CIDRs, the map of used ones is rebuilt
// from the Nodes themselves at start, and only the leader runs it, so a
// CIDR is never handed out twice, across restarts too.
package nodeipam

import (
	"context"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/capstan-net/capstan/control/controllers/worker"
)

// ConditionReason marks a Node the allocator could not serve.
const ConditionReason = "CIDRNotAvailable"

// Controller allocates node pod CIDRs.
type Controller struct {
	client   kubernetes.Interface
	nodes    corelisters.NodeLister
	synced   cache.InformerSynced
	recorder record.EventRecorder
	log      *slog.Logger
	queue    workqueue.TypedRateLimitingInterface[string]

	cidr    *net.IPNet
	subBits int // prefix length of each node's range
	count   int // number of node ranges

	mu   sync.Mutex
	used map[int]string // range index -> node name
}

// New allocates /nodeMask ranges (24 by default) out of clusterCIDR.
func New(client kubernetes.Interface, factory informers.SharedInformerFactory, recorder record.EventRecorder, clusterCIDR string, nodeMask int, log *slog.Logger) (*Controller, error) {
	_, cidr, err := net.ParseCIDR(clusterCIDR)
	if err != nil || cidr.IP.To4() == nil {
		return nil, fmt.Errorf("cluster CIDR %q is not an IPv4 CIDR", clusterCIDR)
	}
	ones, _ := cidr.Mask.Size()
	if nodeMask == 0 {
		nodeMask = 24
	}
	if nodeMask < ones || nodeMask > 30 || nodeMask-ones > 16 {
		return nil, fmt.Errorf("node CIDR mask /%d does not fit cluster CIDR %s", nodeMask, clusterCIDR)
	}
	inf := factory.Core().V1().Nodes()
	c := &Controller{
		client: client, nodes: inf.Lister(), synced: inf.Informer().HasSynced, recorder: recorder, log: log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "nodeipam"}),
		cidr: cidr, subBits: nodeMask, count: 1 << (nodeMask - ones), used: map[int]string{},
	}
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { c.observe(obj, false) },
		UpdateFunc: func(_, obj interface{}) { c.observe(obj, false) },
		DeleteFunc: func(obj interface{}) { c.observe(obj, true) },
	})
	return c, nil
}

// observe records the ranges Nodes hold, frees deleted Nodes' ranges and
// queues Nodes that still need one.
func (c *Controller) observe(obj interface{}, deleted bool) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		t, ok := obj.(cache.DeletedFinalStateUnknown)
		if !ok {
			return
		}
		if node, ok = t.Obj.(*corev1.Node); !ok {
			return
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range podCIDRs(node) {
		idx, ok := c.index(s)
		if !ok {
			continue
		}
		switch {
		case deleted && c.used[idx] == node.Name:
			delete(c.used, idx)
		case !deleted:
			c.used[idx] = node.Name
		}
	}
	if !deleted && len(podCIDRs(node)) == 0 {
		c.queue.Add(node.Name)
	}
	if deleted {
		// A freed range may be what a waiting Node needs.
		if all, err := c.nodes.List(labels.Everything()); err == nil {
			for _, n := range all {
				if len(podCIDRs(n)) == 0 {
					c.queue.Add(n.Name)
				}
			}
		}
	}
}

func podCIDRs(n *corev1.Node) []string {
	if len(n.Spec.PodCIDRs) > 0 {
		return n.Spec.PodCIDRs
	}
	if n.Spec.PodCIDR != "" {
		return []string{n.Spec.PodCIDR}
	}
	return nil
}

// index maps a node range inside the cluster CIDR to its number.
func (c *Controller) index(s string) (int, bool) {
	ip, sub, err := net.ParseCIDR(s)
	if err != nil || !c.cidr.Contains(ip) {
		return 0, false
	}
	if ones, _ := sub.Mask.Size(); ones != c.subBits {
		return 0, false
	}
	off := new(big.Int).Sub(new(big.Int).SetBytes(sub.IP.To4()), new(big.Int).SetBytes(c.cidr.IP.To4()))
	return int(off.Int64() >> (32 - c.subBits)), true
}

func (c *Controller) rangeAt(i int) string {
	base := new(big.Int).SetBytes(c.cidr.IP.To4())
	base.Add(base, big.NewInt(int64(i)<<(32-c.subBits)))
	ip := make(net.IP, 4)
	b := base.Bytes()
	copy(ip[4-len(b):], b)
	return fmt.Sprintf("%s/%d", ip, c.subBits)
}

// Run allocates until ctx ends. One worker: allocation is serial.
func (c *Controller) Run(ctx context.Context) {
	worker.Run(ctx, c.queue, 1, []cache.InformerSynced{c.synced}, c.sync, c.log, "node")
}

func (c *Controller) sync(ctx context.Context, name string) error {
	node, err := c.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(podCIDRs(node)) > 0 {
		return nil
	}
	c.mu.Lock()
	idx := -1
	for i := 0; i < c.count; i++ {
		if _, taken := c.used[i]; !taken {
			idx = i
			break
		}
	}
	if idx >= 0 {
		// Held before the write so no other node gets it meanwhile.
		c.used[idx] = name
	}
	c.mu.Unlock()
	if idx < 0 {
		return c.exhausted(ctx, node)
	}
	cidr := c.rangeAt(idx)
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, cidr, cidr)
	_, err = c.client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "capstan-nodeipam"})
	if err != nil {
		c.mu.Lock()
		if c.used[idx] == name {
			delete(c.used, idx)
		}
		c.mu.Unlock()
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("assign %s: %w", cidr, err)
	}
	c.log.Info("assigned pod CIDR", "node", name, "cidr", cidr)
	c.recorder.Eventf(node, corev1.EventTypeNormal, "CIDRAssigned", "Node %s got pod CIDR %s", name, cidr)
	return nil
}

// exhausted tells the Node why it has no CIDR: an event and a condition.
func (c *Controller) exhausted(ctx context.Context, node *corev1.Node) error {
	msg := fmt.Sprintf("no pod CIDR left in %s (%d ranges of /%d, all in use)", c.cidr, c.count, c.subBits)
	c.recorder.Event(node, corev1.EventTypeWarning, ConditionReason, msg)
	n := node.DeepCopy()
	cond := corev1.NodeCondition{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue,
		Reason: ConditionReason, Message: msg, LastTransitionTime: metav1.Now(), LastHeartbeatTime: metav1.Now()}
	found := false
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == cond.Type {
			if n.Status.Conditions[i].Reason == ConditionReason {
				return fmt.Errorf("%s", msg) // already said; retry later
			}
			n.Status.Conditions[i], found = cond, true
		}
	}
	if !found {
		n.Status.Conditions = append(n.Status.Conditions, cond)
	}
	if _, err := c.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return fmt.Errorf("%s", msg)
}
