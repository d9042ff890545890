package nodeipam_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/capstan-net/capstan/control/controllers/nodeipam"
)

func TestRejectsBadRanges(t *testing.T) {
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	for _, c := range []struct {
		cidr string
		mask int
	}{{"10.0.0.0", 24}, {"fd00::/48", 64}, {"10.0.0.0/24", 16}, {"10.0.0.0/8", 31}} {
		if _, err := nodeipam.New(client, factory, record.NewFakeRecorder(1), c.cidr, c.mask, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
			t.Errorf("New(%q, /%d) accepted a bad range", c.cidr, c.mask)
		}
	}
}

// Ranges already held by nodes are never handed out again, and new nodes
// get the lowest free ones, on the fake clientset (no server).
func TestKeepsExistingAndFillsGaps(t *testing.T) {
	objs := []runtime.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "old1"}, Spec: corev1.NodeSpec{PodCIDR: "10.1.0.0/24", PodCIDRs: []string{"10.1.0.0/24"}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "old2"}, Spec: corev1.NodeSpec{PodCIDR: "10.1.2.0/24", PodCIDRs: []string{"10.1.2.0/24"}}},
	}
	for i := 0; i < 3; i++ {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("new%d", i)}})
	}
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	c, err := nodeipam.New(client, factory, record.NewFakeRecorder(100), "10.1.0.0/16", 24, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go c.Run(ctx)
	want := map[string]bool{"10.1.1.0/24": true, "10.1.3.0/24": true, "10.1.4.0/24": true}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		got := map[string]bool{}
		for i := 0; i < 3; i++ {
			n, _ := client.CoreV1().Nodes().Get(ctx, fmt.Sprintf("new%d", i), metav1.GetOptions{})
			if n != nil && n.Spec.PodCIDR != "" {
				got[n.Spec.PodCIDR] = true
			}
		}
		if len(got) == 3 {
			for k := range want {
				if !got[k] {
					t.Fatalf("new nodes got %v, want the gaps %v", got, want)
				}
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("new nodes did not all get a CIDR")
}
