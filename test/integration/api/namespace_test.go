package api_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// TestNamespaceDeletion: deleting a namespace makes it Terminating (no new
// content), empties it of every kind of object, and then removes it.
func TestNamespaceDeletion(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	dyn := dynamic.NewForConfigOrDie(s.Config)
	ctx := context.Background()
	ns := newNamespace(t, cs, "doomed")
	keep := newNamespace(t, cs, "kept")

	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	fill := func(ns string) {
		for _, n := range []string{"one", "two", "three"} {
			must(cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap(n, "0"), metav1.CreateOptions{}))
		}
		must(cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}))
		must(cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sa"}}, metav1.CreateOptions{}))
		must(cs.CoreV1().Services(ns).Create(ctx, service("svc", "", 0), metav1.CreateOptions{}))
		must(cs.CoreV1().Pods(ns).Create(ctx, pod("unbound-1", "", nil), metav1.CreateOptions{}))
		must(cs.CoreV1().Pods(ns).Create(ctx, pod("unbound-2", "", nil), metav1.CreateOptions{}))
		must(cs.AppsV1().Deployments(ns).Create(ctx, deployment("web", 2), metav1.CreateOptions{}))
		must(cs.CoreV1().Endpoints(ns).Create(ctx, &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "svc"}}, metav1.CreateOptions{}))
		must(cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "svc-1"}, AddressType: discoveryv1.AddressTypeIPv4}, metav1.CreateOptions{}))
		must(cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny"}}, metav1.CreateOptions{}))
		must(cs.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "lock"}}, metav1.CreateOptions{}))
		must(cs.CoreV1().Events(ns).Create(ctx, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: "ev"},
			InvolvedObject: corev1.ObjectReference{Kind: "ConfigMap", Namespace: ns, Name: "one"},
			Reason:         "Test", Message: "m", Type: corev1.EventTypeNormal, Source: corev1.EventSource{Component: "test"},
		}, metav1.CreateOptions{}))
		now := metav1.NowMicro()
		must(cs.EventsV1().Events(ns).Create(ctx, &eventsv1.Event{
			ObjectMeta: metav1.ObjectMeta{Name: "ev2"}, EventTime: now, ReportingController: "capstan.test/x", ReportingInstance: "x",
			Action: "Test", Reason: "Test", Type: corev1.EventTypeNormal, Regarding: corev1.ObjectReference{Kind: "ConfigMap", Namespace: ns, Name: "one"},
		}, metav1.CreateOptions{}))
	}
	fill(ns)
	fill(keep)
	svc, err := cs.CoreV1().Services(ns).Get(ctx, "svc", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A finalizer holds the namespace in Terminating until we let go.
	hold := configMap("hold", "0")
	hold.Finalizers = []string{"capstan.test/hold"}
	must(cs.CoreV1().ConfigMaps(ns).Create(ctx, hold, metav1.CreateOptions{}))

	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.DeletionTimestamp == nil || got.Status.Phase != corev1.NamespaceTerminating {
		t.Errorf("deleted namespace: deletionTimestamp %v phase %q, want set and Terminating", got.DeletionTimestamp, got.Status.Phase)
	}
	_, err = cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("late", "0"), metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) || statusCode(err) != http.StatusForbidden {
		t.Errorf("create in a terminating namespace: %s, want 403", fmtErr(err))
	}
	_, err = cs.CoreV1().ConfigMaps(ns).Patch(ctx, "late", types.ApplyYAMLPatchType, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"late"}}`), metav1.PatchOptions{FieldManager: "test"})
	if statusCode(err) != http.StatusForbidden {
		t.Errorf("server-side apply creating in a terminating namespace: %s, want 403", fmtErr(err))
	}

	// Everything but the held ConfigMap goes.
	waitFor(t, 30*time.Second, "namespace content to be deleted", func() (bool, error) {
		cms, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		return len(cms.Items) == 1 && len(pods.Items) == 0, nil
	})
	held, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "hold", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if held.DeletionTimestamp == nil {
		t.Errorf("held configmap has no deletionTimestamp")
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		t.Errorf("namespace went away while content remained: %v", err)
	}
	held.Finalizers = nil
	must(cs.CoreV1().ConfigMaps(ns).Update(ctx, held, metav1.UpdateOptions{}))

	waitFor(t, 30*time.Second, "namespace to disappear", func() (bool, error) {
		_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})

	resources := []schema.GroupVersionResource{
		{Version: "v1", Resource: "configmaps"}, {Version: "v1", Resource: "secrets"}, {Version: "v1", Resource: "serviceaccounts"},
		{Version: "v1", Resource: "services"}, {Version: "v1", Resource: "pods"}, {Version: "v1", Resource: "endpoints"},
		{Version: "v1", Resource: "events"}, {Group: "events.k8s.io", Version: "v1", Resource: "events"},
		{Group: "apps", Version: "v1", Resource: "deployments"}, {Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"},
		{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}, {Group: "coordination.k8s.io", Version: "v1", Resource: "leases"},
	}
	for _, gvr := range resources {
		left, err := dyn.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Errorf("list %s: %v", gvr, err)
			continue
		}
		if len(left.Items) != 0 {
			t.Errorf("%d %s left in the deleted namespace", len(left.Items), gvr.Resource)
		}
		kept, err := dyn.Resource(gvr).Namespace(keep).List(ctx, metav1.ListOptions{})
		if err != nil || len(kept.Items) == 0 {
			t.Errorf("%s in the other namespace: %d, %v", gvr.Resource, len(kept.Items), err)
		}
	}
	// The deleted Service's allocations are free again.
	if _, err := cs.CoreV1().Services(keep).Create(ctx, service("reuse", svc.Spec.ClusterIP, svc.Spec.Ports[0].NodePort), metav1.CreateOptions{}); err != nil {
		t.Errorf("reuse the allocations of a Service deleted with its namespace: %v", err)
	}
	// The name can be used again, for an empty namespace.
	must(cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	cms, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(cms.Items) != 0 {
		t.Errorf("recreated namespace has %d configmaps (%v)", len(cms.Items), err)
	}
}
