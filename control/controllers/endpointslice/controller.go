// Package endpointslice keeps each selector Service's EndpointSlices (and
// its legacy Endpoints) in step with the pods it selects. Slice packing is
// upstream's k8s.io/endpointslice reconciler; this package is the loop
// around it and the legacy Endpoints object kube-proxy-era clients read.
package endpointslice

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	esreconciler "k8s.io/endpointslice"
	esutil "k8s.io/endpointslice/util"
	endpointsutil "k8s.io/kubernetes/pkg/api/v1/endpoints"
	podutil "k8s.io/kubernetes/pkg/api/v1/pod"

	"github.com/capstan-net/capstan/control/controllers/worker"
)

// ControllerName marks the slices this controller manages, as upstream.
const ControllerName = "endpointslice-controller.k8s.io"

// MaxEndpointsPerSlice is upstream's default.
const MaxEndpointsPerSlice = 100

// Controller is the EndpointSlice and Endpoints loop.
type Controller struct {
	client     kubernetes.Interface
	services   corelisters.ServiceLister
	pods       corelisters.PodLister
	slices     discoverylisters.EndpointSliceLister
	endpoints  corelisters.EndpointsLister
	tracker    *esutil.EndpointSliceTracker
	reconciler *esreconciler.Reconciler
	queue      workqueue.TypedRateLimitingInterface[string]
	log        *slog.Logger
	synced     []cache.InformerSynced
}

// New wires the controller to the factory's informers.
func New(client kubernetes.Interface, factory informers.SharedInformerFactory, recorder record.EventRecorder, log *slog.Logger) *Controller {
	svcInf := factory.Core().V1().Services()
	podInf := factory.Core().V1().Pods()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	nodeInf := factory.Core().V1().Nodes()
	epInf := factory.Core().V1().Endpoints()
	c := &Controller{
		client:    client,
		services:  svcInf.Lister(),
		pods:      podInf.Lister(),
		slices:    sliceInf.Lister(),
		endpoints: epInf.Lister(),
		tracker:   esutil.NewEndpointSliceTracker(),
		log:       log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "endpointslice"}),
	}
	c.reconciler = esreconciler.NewReconciler(client, nodeInf.Lister(), MaxEndpointsPerSlice, c.tracker, nil, recorder, ControllerName)

	svcInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueService,
		UpdateFunc: func(_, obj interface{}) { c.enqueueService(obj) },
		DeleteFunc: c.enqueueService,
	})
	podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: c.enqueuePodServices,
		UpdateFunc: func(old, cur interface{}) {
			// A pod that changes labels may leave one Service for another.
			c.enqueuePodServices(old)
			c.enqueuePodServices(cur)
		},
		DeleteFunc: c.enqueuePodServices,
	})
	sliceHandler := func(obj interface{}) {
		slice, ok := obj.(*discovery.EndpointSlice)
		if !ok {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				slice, _ = t.Obj.(*discovery.EndpointSlice)
			}
		}
		if slice == nil || slice.Labels[discovery.LabelManagedBy] != ControllerName {
			return
		}
		// Our own writes are expected; anything else (an edit, a delete by
		// someone else) must be repaired.
		if c.tracker.ShouldSync(slice) {
			if svc := slice.Labels[discovery.LabelServiceName]; svc != "" {
				c.queue.Add(slice.Namespace + "/" + svc)
			}
		}
	}
	sliceInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    sliceHandler,
		UpdateFunc: func(_, obj interface{}) { sliceHandler(obj) },
		DeleteFunc: sliceHandler,
	})
	c.synced = []cache.InformerSynced{svcInf.Informer().HasSynced, podInf.Informer().HasSynced,
		sliceInf.Informer().HasSynced, nodeInf.Informer().HasSynced, epInf.Informer().HasSynced}
	return c
}

func (c *Controller) enqueueService(obj interface{}) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err == nil {
		c.queue.Add(key)
	}
}

func (c *Controller) enqueuePodServices(obj interface{}) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		t, ok := obj.(cache.DeletedFinalStateUnknown)
		if !ok {
			return
		}
		if pod, ok = t.Obj.(*corev1.Pod); !ok {
			return
		}
	}
	svcs, err := c.services.Services(pod.Namespace).List(labels.Everything())
	if err != nil {
		return
	}
	for _, s := range svcs {
		if s.Spec.Selector != nil && labels.SelectorFromValidatedSet(s.Spec.Selector).Matches(labels.Set(pod.Labels)) {
			c.queue.Add(pod.Namespace + "/" + s.Name)
		}
	}
}

// Run syncs Services until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	worker.Run(ctx, c.queue, workers, c.synced, c.sync, c.log, "service")
}

func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := c.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return c.deleteAll(ctx, ns, name)
	}
	if err != nil {
		return err
	}
	if svc.Spec.Selector == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		// Endpoints of selector-less Services are the user's to write.
		return nil
	}
	pods, err := c.pods.Pods(ns).List(labels.SelectorFromValidatedSet(svc.Spec.Selector))
	if err != nil {
		return err
	}
	slices, err := c.slices.EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{
		discovery.LabelServiceName: name, discovery.LabelManagedBy: ControllerName}))
	if err != nil {
		return err
	}
	if c.tracker.StaleSlices(svc, slices) {
		return fmt.Errorf("informer has not yet seen this controller's latest slices for %s", key)
	}
	logger := logr.FromSlogHandler(c.log.Handler())
	if err := c.reconciler.Reconcile(logger, svc, pods, slices, time.Now()); err != nil {
		return err
	}
	return c.syncEndpoints(ctx, svc, pods)
}

// deleteAll removes what a deleted Service leaves behind. (Owner references
// would let the garbage collector do it; this keeps it prompt.)
func (c *Controller) deleteAll(ctx context.Context, ns, name string) error {
	c.tracker.DeleteService(ns, name)
	slices, err := c.slices.EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{
		discovery.LabelServiceName: name, discovery.LabelManagedBy: ControllerName}))
	if err != nil {
		return err
	}
	for _, s := range slices {
		if err := c.client.DiscoveryV1().EndpointSlices(ns).Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	ep, err := c.endpoints.Endpoints(ns).Get(name)
	if err == nil && ep.Labels[discovery.LabelManagedBy] == ControllerName {
		if err := c.client.CoreV1().Endpoints(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// syncEndpoints writes the legacy Endpoints object: ready pods as
// addresses, others as notReadyAddresses, terminating pods left out.
func (c *Controller) syncEndpoints(ctx context.Context, svc *corev1.Service, pods []*corev1.Pod) error {
	var subsets []corev1.EndpointSubset
	for _, pod := range pods {
		if pod.Status.PodIP == "" || pod.DeletionTimestamp != nil && !svc.Spec.PublishNotReadyAddresses {
			continue
		}
		addr := corev1.EndpointAddress{IP: pod.Status.PodIP, NodeName: nodeName(pod),
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}}
		ready := podutil.IsPodReady(pod) || svc.Spec.PublishNotReadyAddresses
		for i := range svc.Spec.Ports {
			sp := &svc.Spec.Ports[i]
			port, err := esreconciler.FindPort(pod, sp)
			if err != nil {
				continue
			}
			ep := corev1.EndpointPort{Name: sp.Name, Port: int32(port), Protocol: sp.Protocol, AppProtocol: sp.AppProtocol}
			sub := corev1.EndpointSubset{Ports: []corev1.EndpointPort{ep}}
			if ready {
				sub.Addresses = []corev1.EndpointAddress{addr}
			} else {
				sub.NotReadyAddresses = []corev1.EndpointAddress{addr}
			}
			subsets = append(subsets, sub)
		}
	}
	subsets = endpointsutil.RepackSubsets(subsets)
	labelsWanted := map[string]string{discovery.LabelManagedBy: ControllerName}
	for k, v := range svc.Labels {
		labelsWanted[k] = v
	}
	cur, err := c.endpoints.Endpoints(svc.Namespace).Get(svc.Name)
	if apierrors.IsNotFound(err) {
		ep := &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: svc.Namespace, Labels: labelsWanted}, Subsets: subsets}
		_, err = c.client.CoreV1().Endpoints(svc.Namespace).Create(ctx, ep, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("endpoints %s/%s appeared meanwhile", svc.Namespace, svc.Name)
		}
		return err
	}
	if err != nil {
		return err
	}
	if reflect.DeepEqual(normalize(cur.Subsets), normalize(subsets)) && reflect.DeepEqual(cur.Labels, labelsWanted) {
		return nil
	}
	next := cur.DeepCopy()
	next.Subsets, next.Labels = subsets, labelsWanted
	_, err = c.client.CoreV1().Endpoints(svc.Namespace).Update(ctx, next, metav1.UpdateOptions{})
	return err
}

func nodeName(pod *corev1.Pod) *string {
	if pod.Spec.NodeName == "" {
		return nil
	}
	n := pod.Spec.NodeName
	return &n
}

// normalize treats nil and empty alike and orders addresses, so that an
// unchanged set does not cause a write.
func normalize(subsets []corev1.EndpointSubset) []corev1.EndpointSubset {
	out := make([]corev1.EndpointSubset, 0, len(subsets))
	for _, s := range subsets {
		s = *s.DeepCopy()
		sort.Slice(s.Addresses, func(i, j int) bool { return s.Addresses[i].IP < s.Addresses[j].IP })
		sort.Slice(s.NotReadyAddresses, func(i, j int) bool { return s.NotReadyAddresses[i].IP < s.NotReadyAddresses[j].IP })
		if len(s.Addresses) == 0 {
			s.Addresses = nil
		}
		if len(s.NotReadyAddresses) == 0 {
			s.NotReadyAddresses = nil
		}
		out = append(out, s)
	}
	return out
}
