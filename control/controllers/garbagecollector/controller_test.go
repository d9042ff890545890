package garbagecollector_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"github.com/capstan-net/capstan/control/controllers/garbagecollector"
	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

func TestOwnerReferencePropagation(t *testing.T) {
	s := servertest.Start(t, servertest.Options{EtcdEndpoints: servertest.EnvEtcd()})
	cs := s.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gc := garbagecollector.New(metadata.NewForConfigOrDie(s.Config), cs.Discovery(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	go gc.Run(ctx, 2)

	ns := "default"
	mk := func(name string, owners ...*corev1.ConfigMap) *corev1.ConfigMap {
		t.Helper()
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}
		yes := true
		for _, o := range owners {
			cm.OwnerReferences = append(cm.OwnerReferences, metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: o.Name, UID: o.UID, BlockOwnerDeletion: &yes})
		}
		out, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	gone := func(name string) bool {
		_, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if cond() {
				return
			}
		}
		t.Fatalf("timed out waiting for %s", what)
	}
	del := func(name string, p metav1.DeletionPropagation) {
		t.Helper()
		if err := cs.CoreV1().ConfigMaps(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &p}); err != nil {
			t.Fatal(err)
		}
	}

	// Background: the owner goes at once, its dependents after.
	bg := mk("bg-owner")
	mk("bg-dep1", bg)
	mk("bg-dep2", bg)
	time.Sleep(500 * time.Millisecond) // let the collector see them
	del("bg-owner", metav1.DeletePropagationBackground)
	wait("background dependents collected", func() bool { return gone("bg-owner") && gone("bg-dep1") && gone("bg-dep2") })

	// Orphan: the dependent stays, without the owner reference.
	or := mk("or-owner")
	mk("or-dep", or)
	time.Sleep(500 * time.Millisecond)
	del("or-owner", metav1.DeletePropagationOrphan)
	wait("orphaned owner gone", func() bool { return gone("or-owner") })
	dep, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "or-dep", metav1.GetOptions{})
	if err != nil || len(dep.OwnerReferences) != 0 {
		t.Fatalf("orphaned dependent: %v, owners %v; want kept with no owners", err, dep.OwnerReferences)
	}

	// Foreground: the owner waits, marked, until its dependents are gone.
	fg := mk("fg-owner")
	mk("fg-dep", fg)
	time.Sleep(500 * time.Millisecond)
	del("fg-owner", metav1.DeletePropagationForeground)
	wait("foreground owner gone after its dependent", func() bool { return gone("fg-owner") && gone("fg-dep") })

	// Two owners, one deleted: the dependent keeps the other.
	a, b := mk("two-a"), mk("two-b")
	mk("two-dep", a, b)
	time.Sleep(500 * time.Millisecond)
	del("two-a", metav1.DeletePropagationBackground)
	wait("dangling reference dropped", func() bool {
		d, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "two-dep", metav1.GetOptions{})
		return err == nil && len(d.OwnerReferences) == 1 && d.OwnerReferences[0].UID == b.UID
	})
	var _ kubernetes.Interface = cs
}
