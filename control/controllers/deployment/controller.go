// Package deployment rolls Deployments out through ReplicaSets: one
// ReplicaSet per pod template, named <deployment>-<pod-template-hash>,
// scaled up and down according to the RollingUpdate or Recreate strategy.
// Pods are the replicaset controller's business; this loop only writes
// ReplicaSets and the Deployment's status.
package deployment

import (
	"context"
	"log/slog"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/control/controllers/worker"
)

// kind is what ReplicaSets' controller references name.
func kind() schema.GroupVersionKind { return appsv1.SchemeGroupVersion.WithKind("Deployment") }

// Controller is the Deployment reconcile loop.
type Controller struct {
	client    kubernetes.Interface
	clock     clock.WithTicker
	log       *slog.Logger
	queue     workqueue.TypedRateLimitingInterface[string]
	dLister   appslisters.DeploymentLister
	rsLister  appslisters.ReplicaSetLister
	podLister corelisters.PodLister
	synced    []cache.InformerSynced
}

// New makes the controller and registers its informers with factory; the
// caller starts the factory. Run starts the workers.
func New(client kubernetes.Interface, factory informers.SharedInformerFactory, clk clock.WithTicker, log *slog.Logger) *Controller {
	c := &Controller{
		client: client, clock: clk, log: log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "deployment", Clock: clk}),
	}
	dInf := factory.Apps().V1().Deployments()
	rsInf := factory.Apps().V1().ReplicaSets()
	podInf := factory.Core().V1().Pods()
	c.dLister, c.rsLister, c.podLister = dInf.Lister(), rsInf.Lister(), podInf.Lister()
	c.synced = []cache.InformerSynced{dInf.Informer().HasSynced, rsInf.Informer().HasSynced, podInf.Informer().HasSynced}

	dInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj interface{}) { c.enqueue(obj) },
		DeleteFunc: c.enqueue,
	})
	rsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: c.rsChanged,
		UpdateFunc: func(oldObj, newObj interface{}) {
			c.rsChanged(oldObj)
			c.rsChanged(newObj)
		},
		DeleteFunc: c.rsChanged,
	})
	// Recreate waits for the old pods to be gone or finished; only
	// these pod events tell it when.
	podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(oldObj, newObj interface{}) {
			o, n := oldObj.(*corev1.Pod), newObj.(*corev1.Pod)
			if finished(n) && !finished(o) {
				c.podDeleted(n)
			}
		},
		DeleteFunc: c.podDeleted,
	})
	return c
}

// Run processes Deployments until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	worker.Run(ctx, c.queue, workers, c.synced, c.sync, c.log, "deployment")
}

func (c *Controller) enqueue(obj interface{}) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		c.queue.Add(key)
	}
}

func unwrap(obj interface{}) interface{} {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return tomb.Obj
	}
	return obj
}

// rsChanged wakes the owning Deployment, or for an orphan every
// Deployment that could adopt it.
func (c *Controller) rsChanged(obj interface{}) {
	rs, ok := unwrap(obj).(*appsv1.ReplicaSet)
	if !ok {
		return
	}
	if ref := metav1.GetControllerOf(rs); ref != nil {
		if ref.Kind == kind().Kind {
			c.queue.Add(rs.Namespace + "/" + ref.Name)
		}
		return
	}
	ds, err := c.dLister.Deployments(rs.Namespace).List(labels.Everything())
	if err != nil {
		return
	}
	for _, d := range ds {
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err == nil && !sel.Empty() && sel.Matches(labels.Set(rs.Labels)) {
			c.queue.Add(d.Namespace + "/" + d.Name)
		}
	}
}

func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

func (c *Controller) podDeleted(obj interface{}) {
	pod, ok := unwrap(obj).(*corev1.Pod)
	if !ok {
		return
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != "ReplicaSet" {
		return
	}
	rs, err := c.rsLister.ReplicaSets(pod.Namespace).Get(ref.Name)
	if err != nil {
		return
	}
	if dref := metav1.GetControllerOf(rs); dref != nil && dref.Kind == kind().Kind {
		c.queue.Add(rs.Namespace + "/" + dref.Name)
	}
}

// sync moves one Deployment a step toward its template and writes its
// status. Each call starts from what the listers and API hold, so a crash
// between any two writes is repaired by the next call.
func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	cached, err := c.dLister.Deployments(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	d := cached.DeepCopy()
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() {
		c.log.Warn("deployment has unusable selector", "deployment", key, "err", err)
		return nil
	}
	if d.DeletionTimestamp != nil {
		// Garbage collection removes the ReplicaSets; scaling them now
		// would only race with it.
		return nil
	}
	all, err := c.rsLister.ReplicaSets(ns).List(labels.Everything())
	if err != nil {
		return err
	}
	rss, err := c.claimReplicaSets(ctx, d, sel, all)
	if err != nil {
		return err
	}
	r := &rollout{c: c, d: d, all: rss}
	return r.run(ctx)
}
