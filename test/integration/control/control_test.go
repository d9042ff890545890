// Package control_test runs a real server with all its control loops
// (scheduler, ReplicaSet, Deployment, node lifecycle, ...) against
// simulated nodes: Node objects and Lease heartbeats written by the test,
// which also plays the kubelet's part of reporting pods running and ready.
package control_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/capstan-net/capstan/control/scheduler"
	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

// fakeKubelets heartbeats the live nodes and marks their bound pods
// Running and Ready, until ctx ends. dead nodes do neither.
type fakeKubelets struct {
	client kubernetes.Interface
	mu     sync.Mutex
	dead   map[string]bool
}

func (f *fakeKubelets) kill(node string) {
	f.mu.Lock()
	f.dead[node] = true
	f.mu.Unlock()
}

func (f *fakeKubelets) alive(node string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.dead[node]
}

func (f *fakeKubelets) run(ctx context.Context, nodes []string) {
	for i := 0; ctx.Err() == nil; i++ {
		for _, n := range nodes {
			if !f.alive(n) {
				continue
			}
			now := metav1.NewMicroTime(time.Now())
			l, err := f.client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, n, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				f.client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Create(ctx, &coordinationv1.Lease{
					ObjectMeta: metav1.ObjectMeta{Name: n}, Spec: coordinationv1.LeaseSpec{HolderIdentity: &n, RenewTime: &now}}, metav1.CreateOptions{})
			} else if err == nil {
				l.Spec.RenewTime = &now
				f.client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Update(ctx, l, metav1.UpdateOptions{})
			}
		}
		pods, err := f.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.Spec.NodeName == "" || !f.alive(p.Spec.NodeName) {
					continue
				}
				if p.DeletionTimestamp != nil {
					zero := int64(0)
					f.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
					continue
				}
				if p.Status.Phase == corev1.PodRunning {
					continue
				}
				p.Status.Phase = corev1.PodRunning
				p.Status.PodIP = fmt.Sprintf("10.244.99.%d", i%250+1)
				p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
				f.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func podsByNode(t *testing.T, cs kubernetes.Interface, ns string) (map[string]int, int) {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, live := map[string]int{}, 0
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		live++
		out[p.Spec.NodeName]++
	}
	return out, live
}

func wait(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

func TestDeploymentSpreadsAndSurvivesNodeLoss(t *testing.T) {
	s := servertest.Start(t, servertest.Options{EtcdEndpoints: servertest.EnvEtcd(), Controllers: []string{"*"}})
	cs := s.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodes := []string{"node-1", "node-2", "node-3"}
	for _, n := range nodes {
		if err := scheduler.CreateSimulatedNode(ctx, cs, n, scheduler.SimulatedNodeResources{CPU: "8", Memory: "16Gi", Pods: 110}, nil); err != nil {
			t.Fatal(err)
		}
	}
	kubelets := &fakeKubelets{client: cs, dead: map[string]bool{}}
	go kubelets.run(ctx, nodes)

	ns := "default"
	replicas := int32(10)
	short := int64(5)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:latest"}},
					// Shorter than the 60 s default so the test is quick.
					Tolerations: []corev1.Toleration{{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists,
						Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &short}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait(t, "10 pods spread 4/3/3", 60*time.Second, func() bool {
		by, live := podsByNode(t, cs, ns)
		counts := []int{by["node-1"], by["node-2"], by["node-3"]}
		fours, threes := 0, 0
		for _, c := range counts {
			switch c {
			case 4:
				fours++
			case 3:
				threes++
			}
		}
		return live == 10 && fours == 1 && threes == 2
	})
	wait(t, "deployment available", 60*time.Second, func() bool {
		got, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && got.Status.AvailableReplicas == 10 && got.Status.ObservedGeneration == got.Generation
	})

	// node-1 stops heartbeating: 40 s later it is Unknown and tainted, 5 s
	// after that its pods are evicted and replaced on the other nodes.
	kubelets.kill("node-1")
	stopped := time.Now()
	wait(t, "node-1 Ready=Unknown", 90*time.Second, func() bool {
		n, err := cs.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionUnknown {
				return true
			}
		}
		return false
	})
	if took := time.Since(stopped); took < 35*time.Second {
		t.Fatalf("node-1 marked Unknown after %s, before its 40 s grace", took)
	}
	wait(t, "10 live pods, none on node-1", 90*time.Second, func() bool {
		by, live := podsByNode(t, cs, ns)
		return live == 10 && by["node-1"] == 0
	})
}
