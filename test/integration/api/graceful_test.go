package api_test

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// A pod bound to a node is deleted gracefully: the API server only marks
// it, and the node's agent finishes the deletion with a zero grace period.
// An unbound pod goes at once. The node's own credentials may do the final
// delete; another node's may not.
func TestGracefulPodDeletion(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{EtcdEndpoints: servertest.EnvEtcd()})
	cs := s.Client()
	ctx := context.Background()
	ns := newNamespace(t, cs, "graceful")
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:latest"}}},
		}
	}
	for _, n := range []string{"bound", "unbound"} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod(n), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	node := "graceful-node-1"
	if err := cs.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: "bound"}, Target: corev1.ObjectReference{Kind: "Node", Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Binding twice is a conflict, as upstream.
	if err := cs.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: "bound"}, Target: corev1.ObjectReference{Kind: "Node", Name: "other"}}, metav1.CreateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("second bind: %v, want 409", err)
	}

	if err := cs.CoreV1().Pods(ns).Delete(ctx, "unbound", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, "unbound", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("unbound pod after delete: %v, want gone", err)
	}

	if err := cs.CoreV1().Pods(ns).Delete(ctx, "bound", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := cs.CoreV1().Pods(ns).Get(ctx, "bound", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("bound pod vanished at once: %v", err)
	}
	if p.DeletionTimestamp == nil || p.DeletionGracePeriodSeconds == nil || *p.DeletionGracePeriodSeconds != 30 {
		t.Fatalf("bound pod not marked for a 30s graceful deletion: ts=%v grace=%v", p.DeletionTimestamp, p.DeletionGracePeriodSeconds)
	}
	// A second delete with a longer grace period changes nothing.
	long := int64(300)
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "bound", metav1.DeleteOptions{GracePeriodSeconds: &long}); err != nil {
		t.Fatal(err)
	}
	if again, _ := cs.CoreV1().Pods(ns).Get(ctx, "bound", metav1.GetOptions{}); *again.DeletionGracePeriodSeconds != 30 {
		t.Fatalf("grace period lengthened to %d", *again.DeletionGracePeriodSeconds)
	}

	zero := int64(0)
	other := nodeClient(t, s, "graceful-node-2")
	if err := other.CoreV1().Pods(ns).Delete(ctx, "bound", metav1.DeleteOptions{GracePeriodSeconds: &zero}); !apierrors.IsForbidden(err) {
		t.Fatalf("another node deleting the pod: %v, want 403", err)
	}
	own := nodeClient(t, s, node)
	if err := own.CoreV1().Pods(ns).Delete(ctx, "bound", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("the pod's node finishing the deletion: %v", err)
	}
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, "bound", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("bound pod after zero-grace delete: %v, want gone", err)
	}
}

func nodeClient(t *testing.T, s *servertest.Server, node string) kubernetes.Interface {
	t.Helper()
	return kubernetes.NewForConfigOrDie(nodeConfig(t, s, node))
}
