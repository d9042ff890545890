package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/capstan-net/capstan/control/server/servertest"
	"github.com/capstan-net/capstan/dataplane/ebpf"
)

// TestDaemonPolicy follows NetworkPolicies, pod labels and a full map through a real API
// server into the pinned maps and the policies' events.
func TestDaemonPolicy(t *testing.T) {
	requireRoot(t)
	srv := servertest.ForTest(t, testServerArgs...)
	cs := kubernetes.NewForConfigOrDie(srv.Config)
	ctx := context.Background()
	pinDir := mountBPFFS(t) + "/node-p"

	mkPod := func(name, node, ip string, labels map[string]string) {
		t.Helper()
		p, err := cs.CoreV1().Pods("default").Create(ctx, &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Spec: v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "c", Image: "x",
				Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status = v1.PodStatus{Phase: v1.PodRunning, PodIP: ip, PodIPs: []v1.PodIP{{IP: ip}}}
		if _, err := cs.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mkPod("server", "node-p", "10.244.0.9", map[string]string{"app": "server"})
	mkPod("client", "node-q", "10.244.1.5", map[string]string{"app": "client"})

	d := startDaemon(t, Config{
		RestConfig:      srv.Config,
		NodeName:        "node-p",
		PinDir:          pinDir,
		NodeAddrs:       []netip.Addr{netip.MustParseAddr("192.168.60.1")},
		MinSyncInterval: 50 * time.Millisecond,
		PolicyRules:     3,
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	server := netip.MustParseAddr("10.244.0.9")
	rules := func() []string {
		p, err := ebpf.OpenPinned(pinDir)
		if err != nil {
			return nil
		}
		defer p.Close()
		pp, err := p.PolicyFor(server)
		if err != nil {
			t.Fatal(err)
		}
		if !pp.IngressIsolated {
			return nil
		}
		out := []string{}
		for _, r := range pp.Ingress {
			for _, pr := range r.Ports {
				out = append(out, r.Peer.String()+" "+pr.String()+" "+pr.Policy)
			}
		}
		return out
	}

	allow := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromString("http"))}},
			}},
		},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(ctx, allow, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.244.1.5/32 TCP/8080 default/allow-client"}
	waitFor(t, d, "the client admitted on the named port", func() bool { return slices.Equal(rules(), want) })

	// Relabelling the client takes it out of the rule; the server stays isolated.
	start := time.Now()
	client, err := cs.CoreV1().Pods("default").Get(ctx, "client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client.Labels["app"] = "other"
	if _, err := cs.CoreV1().Pods("default").Update(ctx, client, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "the relabelled client dropped", func() bool { r := rules(); return r != nil && len(r) == 0 })
	t.Logf("relabel to maps: %v", time.Since(start))

	// A policy that does not fit the 3-entry rule map gets a Warning event.
	var peers []networkingv1.NetworkPolicyPeer
	for _, c := range []string{"10.9.0.1/32", "10.9.0.2/32", "10.9.0.3/32", "10.9.0.4/32", "10.9.0.5/32"} {
		peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: c}})
	}
	big := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "big"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: peers}},
		},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(ctx, big, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "a PolicyMapFull event on the big policy", func() bool {
		evs, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs.Items {
			if ev.Reason == "PolicyMapFull" && ev.InvolvedObject.Name == "big" && ev.Type == v1.EventTypeWarning {
				return true
			}
		}
		return false
	})

	// With the policies gone the server is open again and the maps are empty.
	for _, name := range []string{"allow-client", "big"} {
		if err := cs.NetworkingV1().NetworkPolicies("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, d, "the server open again", func() bool { return rules() == nil })

	mfs, err := d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		found = found || mf.GetName() == "capstan_policy_verdicts_total"
	}
	if !found {
		t.Error("no capstan_policy_verdicts_total metric")
	}
}
