package namespace_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/capstan-net/capstan/control/controllers/namespace"
)

func configMap(ns, name string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("v1")
	u.SetKind("ConfigMap")
	u.SetNamespace(ns)
	u.SetName(name)
	return u
}

// A terminating namespace is emptied, then its "kubernetes" finalizer is
// removed; other namespaces are left alone.
func TestEmptiesThenFinalizes(t *testing.T) {
	now := metav1.Now()
	doomed := &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: "doomed", DeletionTimestamp: &now},
		Spec:       corev1.NamespaceSpec{Finalizers: []corev1.FinalizerName{corev1.FinalizerKubernetes, "example.com/keep"}},
	}
	client := fake.NewClientset(doomed, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}})
	client.Fake.Resources = []*metav1.APIResourceList{{GroupVersion: "v1", APIResources: []metav1.APIResource{
		{Name: "configmaps", Namespaced: true, Kind: "ConfigMap", Verbs: []string{"list", "delete", "deletecollection"}},
		{Name: "pods/log", Namespaced: true, Kind: "Pod", Verbs: []string{"get"}},
	}}}
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{gvr: "ConfigMapList"},
		configMap("doomed", "a"), configMap("doomed", "b"), configMap("other", "c"))
	dyn.PrependReactor("delete-collection", "configmaps", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ns := a.GetNamespace()
		list, _ := dyn.Tracker().List(gvr, schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}, ns)
		items, _ := list.(*unstructured.UnstructuredList)
		for _, it := range items.Items {
			dyn.Tracker().Delete(gvr, ns, it.GetName())
		}
		return true, nil, nil
	})
	var mu sync.Mutex
	var finalized []corev1.FinalizerName
	finalizedCalled := false
	client.PrependReactor("create", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "finalize" {
			return false, nil, nil
		}
		ns := a.(k8stesting.CreateAction).GetObject().(*corev1.Namespace)
		mu.Lock()
		finalized, finalizedCalled = ns.Spec.Finalizers, true
		mu.Unlock()
		return true, ns, nil
	})

	factory := informers.NewSharedInformerFactory(client, 0)
	c := namespace.New(client, dyn, factory, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go c.Run(ctx, 1)

	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		done := finalizedCalled
		mu.Unlock()
		if done {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !finalizedCalled {
		t.Fatal("namespace never finalized")
	}
	if len(finalized) != 1 || finalized[0] != "example.com/keep" {
		t.Fatalf("finalizers after finalize: %v, want only the foreign one kept", finalized)
	}
	left, _ := dyn.Resource(gvr).Namespace("doomed").List(ctx, metav1.ListOptions{})
	kept, _ := dyn.Resource(gvr).Namespace("other").List(ctx, metav1.ListOptions{})
	if len(left.Items) != 0 || len(kept.Items) != 1 {
		t.Fatalf("doomed has %d config maps left, other has %d; want 0 and 1", len(left.Items), len(kept.Items))
	}
}
