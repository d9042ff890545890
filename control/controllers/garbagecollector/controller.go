// Package garbagecollector deletes objects whose owners are gone, and
// carries out foreground and orphan deletion, following ownerReferences
// as kube-controller-manager's garbage collector does. It watches the
// metadata of every listable resource and keeps an owner -> dependents
// index; each decision is checked against the live API before acting.
package garbagecollector

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// node is what the collector knows of one object.
type node struct {
	gvr       schema.GroupVersionResource
	namespace string
	name      string
	uid       types.UID
	owners    []metav1.OwnerReference
	deleting  bool
	finalizer map[string]bool
}

// Controller is the garbage collector.
type Controller struct {
	meta      metadata.Interface
	discovery discovery.DiscoveryInterface
	log       *slog.Logger
	queue     workqueue.TypedRateLimitingInterface[types.UID]

	mu         sync.Mutex
	nodes      map[types.UID]*node
	dependents map[types.UID]map[types.UID]bool
	mapper     meta.RESTMapper
	synced     []cache.InformerSynced
}

// New prepares the collector; Run discovers resources and starts it.
func New(meta metadata.Interface, disc discovery.DiscoveryInterface, log *slog.Logger) *Controller {
	return &Controller{
		meta: meta, discovery: disc, log: log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[types.UID](),
			workqueue.TypedRateLimitingQueueConfig[types.UID]{Name: "garbagecollector"}),
		nodes:      map[types.UID]*node{},
		dependents: map[types.UID]map[types.UID]bool{},
	}
}

// Run watches every resource that can be listed, watched and deleted.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer c.queue.ShutDown()
	groups, err := restmapper.GetAPIGroupResources(c.discovery)
	if err != nil {
		c.log.Error("garbage collector: discovery", "err", err)
		return
	}
	c.mapper = restmapper.NewDiscoveryRESTMapper(groups)
	_, lists, err := c.discovery.ServerGroupsAndResources()
	if err != nil && len(lists) == 0 {
		c.log.Error("garbage collector: resources", "err", err)
		return
	}
	factory := metadatainformer.NewSharedInformerFactory(c.meta, 0)
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") || !has(r.Verbs, "list") || !has(r.Verbs, "watch") || !has(r.Verbs, "delete") {
				continue
			}
			gvr := gv.WithResource(r.Name)
			inf := factory.ForResource(gvr).Informer()
			inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
				AddFunc:    func(obj interface{}) { c.observe(gvr, obj, false) },
				UpdateFunc: func(_, obj interface{}) { c.observe(gvr, obj, false) },
				DeleteFunc: func(obj interface{}) { c.observe(gvr, obj, true) },
			})
			c.synced = append(c.synced, inf.HasSynced)
		}
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	for i := 0; i < workers; i++ {
		go func() {
			for c.next(ctx) {
			}
		}()
	}
	<-ctx.Done()
	factory.Shutdown()
}

func (c *Controller) observe(gvr schema.GroupVersionResource, obj interface{}, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	uid := m.GetUID()
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.nodes[uid]; ok {
		for _, o := range old.owners {
			delete(c.dependents[o.UID], uid)
		}
	}
	if deleted {
		delete(c.nodes, uid)
		// Its dependents may now be orphans to collect.
		for dep := range c.dependents[uid] {
			c.queue.Add(dep)
		}
		return
	}
	n := &node{gvr: gvr, namespace: m.GetNamespace(), name: m.GetName(), uid: uid,
		owners: m.GetOwnerReferences(), deleting: m.GetDeletionTimestamp() != nil, finalizer: map[string]bool{}}
	for _, f := range m.GetFinalizers() {
		n.finalizer[f] = true
	}
	c.nodes[uid] = n
	for _, o := range n.owners {
		if c.dependents[o.UID] == nil {
			c.dependents[o.UID] = map[types.UID]bool{}
		}
		c.dependents[o.UID][uid] = true
	}
	if len(n.owners) > 0 || (n.deleting && (n.finalizer[metav1.FinalizerDeleteDependents] || n.finalizer[metav1.FinalizerOrphanDependents])) {
		c.queue.Add(uid)
	}
}

func (c *Controller) next(ctx context.Context) bool {
	uid, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(uid)
	requeue, err := c.process(ctx, uid)
	switch {
	case err != nil:
		c.log.Warn("garbage collector", "uid", uid, "err", err)
		c.queue.AddRateLimited(uid)
	case requeue:
		c.queue.AddAfter(uid, 500*time.Millisecond)
	default:
		c.queue.Forget(uid)
	}
	return true
}

func (c *Controller) process(ctx context.Context, uid types.UID) (bool, error) {
	c.mu.Lock()
	n, ok := c.nodes[uid]
	var deps []*node
	for d := range c.dependents[uid] {
		if dn, ok := c.nodes[d]; ok {
			deps = append(deps, dn)
		}
	}
	c.mu.Unlock()
	if !ok {
		return false, nil
	}
	if n.deleting && n.finalizer[metav1.FinalizerOrphanDependents] {
		return c.orphan(ctx, n, deps)
	}
	if n.deleting && n.finalizer[metav1.FinalizerDeleteDependents] {
		return c.foreground(ctx, n, deps)
	}
	return c.collectIfOrphaned(ctx, n)
}

// collectIfOrphaned deletes n when every owner is gone, or drops the
// references to owners that are gone when some remain.
func (c *Controller) collectIfOrphaned(ctx context.Context, n *node) (bool, error) {
	if len(n.owners) == 0 {
		return false, nil
	}
	var dangling []types.UID
	waitingForeground := false
	for _, o := range n.owners {
		alive, deletingFg, err := c.ownerState(ctx, n, o)
		if err != nil {
			return false, err
		}
		if !alive {
			dangling = append(dangling, o.UID)
		}
		if deletingFg {
			waitingForeground = true
		}
	}
	if len(dangling) == 0 || waitingForeground {
		return false, nil
	}
	if len(dangling) == len(n.owners) {
		policy := metav1.DeletePropagationBackground
		err := c.meta.Resource(n.gvr).Namespace(n.namespace).Delete(ctx, n.name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &n.uid}, PropagationPolicy: &policy})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return false, fmt.Errorf("delete %s %s/%s: %w", n.gvr.Resource, n.namespace, n.name, err)
		}
		c.log.Info("deleted object whose owners are gone", "resource", n.gvr.Resource, "namespace", n.namespace, "name", n.name)
		return false, nil
	}
	return false, c.dropOwners(ctx, n, dangling)
}

// ownerState reports whether the owner o of n still exists (same UID),
// and whether it is being deleted in the foreground.
func (c *Controller) ownerState(ctx context.Context, n *node, o metav1.OwnerReference) (alive, foreground bool, err error) {
	c.mu.Lock()
	on, known := c.nodes[o.UID]
	c.mu.Unlock()
	if known {
		return true, on.deleting && on.finalizer[metav1.FinalizerDeleteDependents], nil
	}
	// Not in the cache: ask the API, in case the cache is behind.
	gv, err := schema.ParseGroupVersion(o.APIVersion)
	if err != nil {
		return false, false, nil
	}
	mapping, err := c.mapper.RESTMapping(gv.WithKind(o.Kind).GroupKind(), gv.Version)
	if err != nil {
		return false, false, nil // an owner of an unknown kind cannot exist
	}
	ns := n.namespace
	if mapping.Scope.Name() != meta.RESTScopeNameNamespace {
		ns = ""
	}
	live, err := c.meta.Resource(mapping.Resource).Namespace(ns).Get(ctx, o.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	if live.UID != o.UID {
		return false, false, nil
	}
	fg := live.DeletionTimestamp != nil && has(live.Finalizers, metav1.FinalizerDeleteDependents)
	return true, fg, nil
}

// foreground deletes n's dependents first; once none remain, it removes
// the foregroundDeletion finalizer so the API server deletes n.
func (c *Controller) foreground(ctx context.Context, n *node, deps []*node) (bool, error) {
	blocking := 0
	for _, d := range deps {
		blocks := false
		for _, o := range d.owners {
			if o.UID == n.uid && o.BlockOwnerDeletion != nil && *o.BlockOwnerDeletion {
				blocks = true
			}
		}
		if !d.deleting {
			policy := metav1.DeletePropagationForeground
			err := c.meta.Resource(d.gvr).Namespace(d.namespace).Delete(ctx, d.name, metav1.DeleteOptions{PropagationPolicy: &policy})
			if err != nil && !apierrors.IsNotFound(err) {
				return false, err
			}
		}
		if blocks {
			blocking++
		}
	}
	if blocking > 0 {
		return true, nil
	}
	return false, c.removeFinalizer(ctx, n, metav1.FinalizerDeleteDependents)
}

// orphan removes the owner reference to n from its dependents, then the
// orphan finalizer from n.
func (c *Controller) orphan(ctx context.Context, n *node, deps []*node) (bool, error) {
	for _, d := range deps {
		if err := c.dropOwners(ctx, d, []types.UID{n.uid}); err != nil {
			return false, err
		}
	}
	return false, c.removeFinalizer(ctx, n, metav1.FinalizerOrphanDependents)
}

func (c *Controller) dropOwners(ctx context.Context, n *node, uids []types.UID) error {
	// A JSON merge patch cannot remove list items, so send the whole list
	// back with the object's UID as a precondition.
	drop := map[types.UID]bool{}
	for _, u := range uids {
		drop[u] = true
	}
	keep := []metav1.OwnerReference{}
	for _, o := range n.owners {
		if !drop[o.UID] {
			keep = append(keep, o)
		}
	}
	patch, _ := json.Marshal(map[string]interface{}{"metadata": map[string]interface{}{"ownerReferences": keep, "uid": n.uid}})
	_, err := c.meta.Resource(n.gvr).Namespace(n.namespace).Patch(ctx, n.name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func (c *Controller) removeFinalizer(ctx context.Context, n *node, f string) error {
	cur, err := c.meta.Resource(n.gvr).Namespace(n.namespace).Get(ctx, n.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	keep := []string{}
	for _, x := range cur.Finalizers {
		if x != f {
			keep = append(keep, x)
		}
	}
	patch, _ := json.Marshal(map[string]interface{}{"metadata": map[string]interface{}{
		"finalizers": keep, "resourceVersion": cur.ResourceVersion}})
	_, err = c.meta.Resource(n.gvr).Namespace(n.namespace).Patch(ctx, n.name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
