package daemonset_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/control/controllers/daemonset"
	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

// TestDaemonSetFollowsNodesOnServer runs the controller against a real API
// server with simulated Node objects (no kubelet, no scheduler): pods must
// be pinned by affinity to each eligible node and follow node changes.
func TestDaemonSetFollowsNodesOnServer(t *testing.T) {
	srv := servertest.Start(t, servertest.Options{})
	client := kubernetes.NewForConfigOrDie(srv.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	factory := informers.NewSharedInformerFactory(client, 0)
	c := daemonset.New(client, factory, clock.RealClock{}, log)
	factory.Start(ctx.Done())
	go c.Run(ctx, 2)
	t.Cleanup(factory.Shutdown)
	t.Cleanup(cancel)

	addNode := func(name string, taints ...corev1.Taint) {
		t.Helper()
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
			Spec: corev1.NodeSpec{Taints: taints}}
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	addNode("n1")
	addNode("n2")
	addNode("n3", corev1.Taint{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule})

	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "default"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "agent"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
			},
		},
	}
	created, err := client.AppsV1().DaemonSets("default").Create(ctx, ds, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// podNodes maps each node to how many live pods of the DaemonSet aim
	// at it, read from the pods' pinning affinity.
	podNodes := func() map[string]int {
		t.Helper()
		pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, p := range pods.Items {
			ref := metav1.GetControllerOf(&p)
			if p.DeletionTimestamp != nil || ref == nil || ref.UID != created.UID {
				continue
			}
			out[pinnedNode(t, &p)]++
		}
		return out
	}
	waitFor := func(what string, want map[string]int) {
		t.Helper()
		var got map[string]int
		for ctx.Err() == nil {
			got = podNodes()
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("timed out waiting for %s: pods per node %v, want %v", what, got, want)
	}

	// n3's taint is not tolerated: no pod there.
	waitFor("one pod on each untainted node", map[string]int{"n1": 1, "n2": 1})

	addNode("n4")
	waitFor("a pod on the new node", map[string]int{"n1": 1, "n2": 1, "n4": 1})

	if err := client.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the deleted node's pod gone", map[string]int{"n2": 1, "n4": 1})

	for ctx.Err() == nil {
		got, err := client.AppsV1().DaemonSets("default").Get(ctx, "agent", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := got.Status
		if st.DesiredNumberScheduled == 2 && st.CurrentNumberScheduled == 2 && st.UpdatedNumberScheduled == 2 &&
			st.NumberUnavailable == 2 && st.NumberMisscheduled == 0 && st.ObservedGeneration == got.Generation {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("timed out waiting for status desired=current=updated=2, unavailable=2 (nothing runs the pods)")
}

// pinnedNode checks that the pod's required node affinity is exactly one
// matchFields term on metadata.name and returns the node it names.
func pinnedNode(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	a := p.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		t.Fatalf("pod %s has no required node affinity", p.Name)
	}
	terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) != 1 || len(terms[0].MatchFields) != 1 {
		t.Fatalf("pod %s affinity terms %+v, want one matchFields term", p.Name, terms)
	}
	r := terms[0].MatchFields[0]
	if r.Key != "metadata.name" || r.Operator != corev1.NodeSelectorOpIn || len(r.Values) != 1 {
		t.Fatalf("pod %s matchFields %+v, want metadata.name In [node]", p.Name, r)
	}
	return r.Values[0]
}
