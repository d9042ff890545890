package nodeipam_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/capstan-net/capstan/control/controllers/nodeipam"
	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

func start(t *testing.T, ctx context.Context, cs kubernetes.Interface, cidr string, mask int) {
	t.Helper()
	factory := informers.NewSharedInformerFactory(cs, 0)
	c, err := nodeipam.New(cs, factory, record.NewFakeRecorder(100), cidr, mask, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	go c.Run(ctx)
}

func cidrs(t *testing.T, cs kubernetes.Interface) map[string]string {
	t.Helper()
	l, err := cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range l.Items {
		out[n.Name] = n.Spec.PodCIDR
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestFiftyNodesDistinctCIDRsAcrossRestart(t *testing.T) {
	s := servertest.Start(t, servertest.Options{EtcdEndpoints: servertest.EnvEtcd()})
	cs := s.Client()
	ctx, cancel := context.WithCancel(context.Background())
	start(t, ctx, cs, "10.244.0.0/16", 24)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := cs.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%02d", i)}}, metav1.CreateOptions{})
			if err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	distinct := func() bool {
		seen := map[string]bool{}
		for _, c := range cidrs(t, cs) {
			if c == "" || seen[c] {
				return false
			}
			seen[c] = true
		}
		return len(seen) == 50
	}
	waitFor(t, "50 distinct pod CIDRs", distinct)
	// A new controller (a restart, or another leader) must not reuse them.
	cancel()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	start(t, ctx2, cs, "10.244.0.0/16", 24)
	for i := 50; i < 55; i++ {
		if _, err := cs.CoreV1().Nodes().Create(ctx2, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%02d", i)}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "55 distinct pod CIDRs after a restart", func() bool {
		seen := map[string]bool{}
		for _, c := range cidrs(t, cs) {
			if c == "" || seen[c] {
				return false
			}
			seen[c] = true
		}
		return len(seen) == 55
	})
}

func TestExhaustionThenFreed(t *testing.T) {
	s := servertest.Start(t, servertest.Options{EtcdEndpoints: servertest.EnvEtcd()})
	cs := s.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start(t, ctx, cs, "10.250.0.0/23", 24) // room for two nodes
	for _, n := range []string{"a", "b", "c"} {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // a and b first
	}
	waitFor(t, "c told it has no CIDR", func() bool {
		n, err := cs.CoreV1().Nodes().Get(ctx, "c", metav1.GetOptions{})
		if err != nil || n.Spec.PodCIDR != "" {
			return false
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeNetworkUnavailable && cond.Reason == nodeipam.ConditionReason {
				return true
			}
		}
		return false
	})
	got := cidrs(t, cs)
	if got["a"] == "" || got["b"] == "" || got["a"] == got["b"] {
		t.Fatalf("a and b: %q %q", got["a"], got["b"])
	}
	freed := got["a"]
	if err := cs.CoreV1().Nodes().Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c gets the freed CIDR", func() bool { return cidrs(t, cs)["c"] == freed })
}
