package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8sschema "k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/kubernetes/pkg/apis/apps"
	api "k8s.io/kubernetes/pkg/apis/core"

	"github.com/capstan-net/capstan/control/storage"
)

var scaleGVK = autoscalingv1.SchemeGroupVersion.WithKind("Scale")

// replicasOf reads and writes spec.replicas of scalable internal objects.
func replicasOf(obj runtime.Object) (*int32, *metav1.LabelSelector, int32, error) {
	switch o := obj.(type) {
	case *apps.Deployment:
		return &o.Spec.Replicas, o.Spec.Selector, o.Status.Replicas, nil
	case *apps.ReplicaSet:
		return &o.Spec.Replicas, o.Spec.Selector, o.Status.Replicas, nil
	}
	return nil, nil, 0, fmt.Errorf("%T has no scale subresource", obj)
}

func scaleFor(in runtime.Object) (*autoscalingv1.Scale, error) {
	rep, sel, status, err := replicasOf(in)
	if err != nil {
		return nil, err
	}
	m := accessor(in)
	selector := ""
	if sel != nil {
		if s, err := metav1.LabelSelectorAsSelector(sel); err == nil {
			selector = s.String()
		}
	}
	sc := &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: m.GetName(), Namespace: m.GetNamespace(), UID: m.GetUID(),
			ResourceVersion: m.GetResourceVersion(), CreationTimestamp: m.GetCreationTimestamp()},
		Spec:   autoscalingv1.ScaleSpec{Replicas: *rep},
		Status: autoscalingv1.ScaleStatus{Replicas: status, Selector: selector},
	}
	sc.SetGroupVersionKind(scaleGVK)
	return sc, nil
}

func (s *Server) getScale(ctx context.Context, ri reqInfo) (runtime.Object, error) {
	obj := ri.res.NewStored()
	if err := s.store.Get(ctx, ri.res.Key(ri.namespace, ri.name), obj); err != nil {
		return nil, err
	}
	in, err := ri.res.ToInternal(obj)
	if err != nil {
		return nil, err
	}
	return scaleFor(in)
}

// updateScale handles PUT and PATCH of a scale subresource by changing
// spec.replicas of the parent through its own strategy.
func (s *Server) updateScale(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, error) {
	body, err := readBody(r)
	if err != nil {
		return nil, err
	}
	var pt types.PatchType
	if ri.verb == "patch" {
		if pt, err = patchType(r); err != nil {
			return nil, err
		}
		if pt == types.ApplyYAMLPatchType {
			return nil, statusFor(http.StatusUnsupportedMediaType, metav1.StatusReasonUnsupportedMediaType, "apply is not supported on the scale subresource")
		}
	}
	parent := ri
	parent.sub = ""
	out, err := s.doUpdate(ctx, r, parent, updateOpts{}, func(ctx context.Context, old runtime.Object) (runtime.Object, error) {
		cur, err := scaleFor(old)
		if err != nil {
			return nil, err
		}
		data := body
		if ri.verb == "patch" {
			var buf bytesBuffer
			if err := encodeTo(&buf, jsonInfo(), cur, autoscalingv1.SchemeGroupVersion); err != nil {
				return nil, err
			}
			if data, err = applyJSONPatch(pt, buf.Bytes(), body, &autoscalingv1.Scale{}); err != nil {
				return nil, err
			}
		}
		jr := r.Clone(ctx)
		jr.Header.Set("Content-Type", runtime.ContentTypeJSON)
		if ri.verb == "update" {
			jr.Header.Set("Content-Type", r.Header.Get("Content-Type"))
		}
		decoded, _, err := decodeBody(jr, data, scaleGVK, &autoscalingv1.Scale{})
		if err != nil {
			return nil, err
		}
		sc := decoded.(*autoscalingv1.Scale)
		if sc.Name != ri.name {
			return nil, badRequest("the name of the object (%s) does not match the name on the URL (%s)", sc.Name, ri.name)
		}
		if sc.Spec.Replicas < 0 {
			return nil, apierrors.NewInvalid(k8sschema.GroupKind{Group: "autoscaling", Kind: "Scale"}, ri.name,
				field.ErrorList{field.Invalid(field.NewPath("spec", "replicas"), sc.Spec.Replicas, "must be greater than or equal to 0")})
		}
		if sc.ResourceVersion != "" && sc.ResourceVersion != accessor(old).GetResourceVersion() {
			return nil, apierrors.NewConflict(ri.res.GroupResource(), ri.name, errors.New("the object has been modified; please apply your changes to the latest version and try again"))
		}
		rep, _, _, _ := replicasOf(old)
		*rep = sc.Spec.Replicas
		return old, nil
	})
	if err != nil {
		return nil, err
	}
	in, err := ri.res.ToInternal(out)
	if err != nil {
		return nil, err
	}
	return scaleFor(in)
}

// bind assigns a pod to a node (pods/binding), as the scheduler does.
func (s *Server) bind(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, int, error) {
	data, err := readBody(r)
	if err != nil {
		return nil, 0, err
	}
	obj, _, err := decodeBody(r, data, corev1.SchemeGroupVersion.WithKind("Binding"), &corev1.Binding{})
	if err != nil {
		return nil, 0, err
	}
	b := obj.(*corev1.Binding)
	if b.Name != "" && b.Name != ri.name {
		return nil, 0, badRequest("the name of the object (%s) does not match the name on the URL (%s)", b.Name, ri.name)
	}
	if b.Target.Kind != "" && b.Target.Kind != "Node" {
		return nil, 0, apierrors.NewInvalid(k8sschema.GroupKind{Kind: "Binding"}, ri.name, field.ErrorList{field.NotSupported(field.NewPath("target", "kind"), b.Target.Kind, []string{"Node"})})
	}
	if b.Target.Name == "" {
		return nil, 0, apierrors.NewInvalid(k8sschema.GroupKind{Kind: "Binding"}, ri.name, field.ErrorList{field.Required(field.NewPath("target", "name"), "")})
	}
	key := ri.res.Key(ri.namespace, ri.name)
	_, err = s.store.GuaranteedUpdate(ctx, key, ri.res.NewStored, nil, func(existing runtime.Object) (runtime.Object, error) {
		pod := existing.(*corev1.Pod).DeepCopy()
		if b.UID != "" && b.UID != pod.UID {
			return nil, apierrors.NewConflict(ri.res.GroupResource(), ri.name, fmt.Errorf("the UID in the binding (%s) does not match the pod's (%s)", b.UID, pod.UID))
		}
		if pod.DeletionTimestamp != nil {
			return nil, apierrors.NewConflict(ri.res.GroupResource(), ri.name, errors.New("pod is being deleted, cannot be assigned to a host"))
		}
		if pod.Spec.NodeName != "" {
			return nil, apierrors.NewConflict(ri.res.GroupResource(), ri.name, fmt.Errorf("pod %s is already assigned to node %q", ri.name, pod.Spec.NodeName))
		}
		pod.Spec.NodeName = b.Target.Name
		for k, v := range b.Annotations {
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			pod.Annotations[k] = v
		}
		setPodCondition(pod, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()})
		return pod, nil
	})
	if err != nil {
		return nil, 0, err
	}
	return &metav1.Status{Status: metav1.StatusSuccess, Code: http.StatusCreated}, http.StatusCreated, nil
}

func setPodCondition(pod *corev1.Pod, c corev1.PodCondition) {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == c.Type {
			pod.Status.Conditions[i] = c
			return
		}
	}
	pod.Status.Conditions = append(pod.Status.Conditions, c)
}

// evict deletes a pod through pods/eviction. Capstan has no
// PodDisruptionBudgets yet, so every eviction is allowed.
func (s *Server) evict(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, int, error) {
	data, err := readBody(r)
	if err != nil {
		return nil, 0, err
	}
	obj, _, err := decodeBody(r, data, policyv1.SchemeGroupVersion.WithKind("Eviction"), &policyv1.Eviction{})
	if err != nil {
		return nil, 0, err
	}
	ev := obj.(*policyv1.Eviction)
	opts := ev.DeleteOptions
	if opts == nil {
		opts = &metav1.DeleteOptions{}
	}
	one := ri
	one.sub = ""
	if _, err := s.deleteObject(ctx, one, opts); err != nil {
		return nil, 0, err
	}
	return &metav1.Status{Status: metav1.StatusSuccess, Code: http.StatusCreated}, http.StatusCreated, nil
}

// podStream serves pods/log, exec, attach and portforward by proxying to
// the agent of the pod's node.
func (s *Server) podStream(ctx context.Context, w http.ResponseWriter, r *http.Request, ri reqInfo) error {
	if ri.verb != "get" && ri.verb != "create" {
		return statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, ri.verb+" is not supported on pods/"+ri.sub)
	}
	pod := &corev1.Pod{}
	if err := s.store.Get(ctx, ri.res.Key(ri.namespace, ri.name), pod); err != nil {
		return err
	}
	if pod.Spec.NodeName == "" {
		return badRequest("pod %s does not have a host assigned", ri.name)
	}
	if s.cfg.NodeProxy == nil {
		return statusFor(http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
			fmt.Sprintf("pods/%s is served by the agent on node %q, which this server cannot reach", ri.sub, pod.Spec.NodeName))
	}
	return s.cfg.NodeProxy(w, r, pod, ri.sub)
}

// --- namespaces ---

// namespaceFinalized reports whether a stored namespace has no spec finalizers left.
func namespaceFinalized(stored runtime.Object) bool {
	ns, ok := stored.(*corev1.Namespace)
	return ok && len(ns.Spec.Finalizers) == 0
}

// markNamespaceTerminating starts deleting a namespace: it becomes
// Terminating, and once the namespace controller has removed its content
// and its "kubernetes" finalizer, it is deleted. done is nil when the
// namespace can be deleted at once.
func (s *Server) markNamespaceTerminating(ctx context.Context, ri reqInfo, in runtime.Object, rv string, opts *metav1.DeleteOptions) (runtime.Object, error) {
	ns := in.(*api.Namespace)
	if ns.DeletionTimestamp != nil && len(ns.Spec.Finalizers) == 0 && len(ns.Finalizers) == 0 {
		return nil, nil
	}
	if ns.DeletionTimestamp != nil {
		return ri.res.ToServed(in)
	}
	if len(ns.Spec.Finalizers) == 0 && len(ns.Finalizers) == 0 {
		return nil, nil
	}
	now := metav1.Now()
	ns.DeletionTimestamp = &now
	ns.Status.Phase = api.NamespaceTerminating
	stored, err := ri.res.ToStored(ns)
	if err != nil {
		return nil, err
	}
	if len(opts.DryRun) > 0 {
		return ri.res.ToServed(stored)
	}
	out, err := s.store.GuaranteedUpdate(ctx, ri.res.Key("", ri.name), ri.res.NewStored, &storage.Preconditions{ResourceVersion: &rv}, func(runtime.Object) (runtime.Object, error) {
		return stored, nil
	})
	if err != nil {
		return nil, err
	}
	return ri.res.ToServed(out)
}

// finalizeNamespace is PUT namespaces/<name>/finalize.
func (s *Server) finalizeNamespace(ctx context.Context, r *http.Request, ri reqInfo, in runtime.Object) (runtime.Object, bool, error) {
	nsIn := in.(*api.Namespace)
	if nsIn.Name != ri.name {
		return nil, false, badRequest("the name of the object (%s) does not match the name on the URL (%s)", nsIn.Name, ri.name)
	}
	out, err := s.doUpdate(ctx, r, ri, updateOpts{}, func(ctx context.Context, old runtime.Object) (runtime.Object, error) {
		o := old.(*api.Namespace)
		o.Spec.Finalizers = nsIn.Spec.Finalizers
		if nsIn.ResourceVersion != "" {
			o.ResourceVersion = nsIn.ResourceVersion
		}
		return o, nil
	})
	return out, false, err
}

var _ = strconv.Itoa
