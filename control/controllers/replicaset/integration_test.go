package replicaset_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/control/controllers/replicaset"
	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

// TestAdoptReleaseOnServer checks the ownerReference patches against the
// real API server's strategic merge, which the fake clientset only
// approximates.
func TestAdoptReleaseOnServer(t *testing.T) {
	srv := servertest.Start(t, servertest.Options{})
	client := kubernetes.NewForConfigOrDie(srv.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	factory := informers.NewSharedInformerFactory(client, 0)
	c := replicaset.New(client, factory, clock.RealClock{}, log)
	factory.Start(ctx.Done())
	go c.Run(ctx, 2)
	t.Cleanup(factory.Shutdown)
	t.Cleanup(cancel)

	// An orphan that matches exists before the ReplicaSet.
	orphan := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "orphan", Namespace: "default", Labels: map[string]string{"app": "api"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, orphan, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := int32(2)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "default"},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "api"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
			},
		},
	}
	created, err := client.AppsV1().ReplicaSets("default").Create(ctx, rs, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	owned := func() (mine []corev1.Pod, others []corev1.Pod) {
		pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			if ref := metav1.GetControllerOf(&p); ref != nil && ref.UID == created.UID {
				mine = append(mine, p)
			} else {
				others = append(others, p)
			}
		}
		return mine, others
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for ctx.Err() == nil {
			if ok() {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("timed out waiting for %s", what)
	}

	waitFor("adoption plus one new pod", func() bool {
		mine, _ := owned()
		adopted := false
		for _, p := range mine {
			adopted = adopted || p.Name == "orphan"
		}
		return len(mine) == 2 && adopted
	})

	// Relabel the adopted pod: it must be released (its reference
	// removed by patch) and replaced.
	patch := []byte(`{"metadata":{"labels":{"app":"elsewhere"}}}`)
	if _, err := client.CoreV1().Pods("default").Patch(ctx, "orphan", types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("release and replacement", func() bool {
		mine, others := owned()
		released := false
		for _, p := range others {
			released = released || (p.Name == "orphan" && len(p.OwnerReferences) == 0)
		}
		return len(mine) == 2 && released
	})

	waitFor("status", func() bool {
		got, err := client.AppsV1().ReplicaSets("default").Get(ctx, "api", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got.Status.Replicas == 2 && got.Status.FullyLabeledReplicas == 2 && got.Status.ObservedGeneration == got.Generation
	})
}
