package addons_test

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/control/addons"
	"github.com/capstan-net/capstan/control/server/servertest"
)

// A server deploys CoreDNS at start; applying again takes back a field
// edited by hand; disabling removes the add-on's objects and leaves a
// user's of the same name alone.
func TestServerAppliesAndRemoves(t *testing.T) {
	srv := servertest.ForTest(t)
	cs := srv.Client()
	ctx := context.Background()
	svc, err := cs.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("kube-dns after the server's start: %v", err)
	}
	if svc.Spec.ClusterIP != "10.96.0.10" {
		t.Errorf("kube-dns at %s, want 10.96.0.10", svc.Spec.ClusterIP)
	}
	cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil || cm.Data["Corefile"] == "" {
		t.Fatalf("coredns ConfigMap: %v %v", err, cm.Data)
	}

	if _, err := cs.AppsV1().Deployments("kube-system").Patch(ctx, "coredns", types.MergePatchType,
		[]byte(`{"spec":{"replicas":5}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	a, err := addons.NewApplier(srv.Config, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cfg := addons.Config{DNSIP: netip.MustParseAddr("10.96.0.10"), Domain: "cluster.local", Upstream: []string{addons.DefaultUpstream}}
	if err := a.Sync(ctx, cfg, nil); err != nil {
		t.Fatal(err)
	}
	d, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil || *d.Spec.Replicas != 2 {
		t.Fatalf("after applying again: %v, replicas %d, want 2", err, *d.Spec.Replicas)
	}

	// The same name, someone else's: no add-on label.
	if err := cs.CoreV1().ServiceAccounts("kube-system").Delete(ctx, "coredns", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts("kube-system").Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(ctx, cfg, []string{addons.CoreDNS}); err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{
		"Service":            get(cs.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})),
		"ConfigMap":          get(cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "coredns", metav1.GetOptions{})),
		"ClusterRole":        get(cs.RbacV1().ClusterRoles().Get(ctx, "capstan:coredns", metav1.GetOptions{})),
		"ClusterRoleBinding": get(cs.RbacV1().ClusterRoleBindings().Get(ctx, "capstan:coredns", metav1.GetOptions{})),
	} {
		if !apierrors.IsNotFound(err) {
			t.Errorf("%s of the disabled add-on: %v, want it gone", what, err)
		}
	}
	// The Deployment goes in the background (its pods first); the user's account stays.
	if d, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{}); err == nil && d.DeletionTimestamp == nil {
		t.Error("the disabled add-on's Deployment is neither gone nor going")
	}
	if _, err := cs.CoreV1().ServiceAccounts("kube-system").Get(ctx, "coredns", metav1.GetOptions{}); err != nil {
		t.Errorf("a user's ServiceAccount of the add-on's name: %v, want it kept", err)
	}
	// Disabled twice: nothing left to do, no error.
	if err := a.Sync(ctx, cfg, []string{addons.CoreDNS}); err != nil {
		t.Fatal(err)
	}
}

func get[T any](_ T, err error) error { return err }
