//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-net/capstan/cluster"
)

func healingScenarios() []scenario {
	return []scenario{
		{"self-healing: a deleted pod is replaced, no request fails", notVXLAN, func(t *testing.T, e *env) {
			victim := e.echoPods(t)[0]
			l := e.startLoop(t, "loop-delete", e.nodes[1], "--interval", "20ms", e.clusterIP(t, "echo")+":80")
			if err := e.cs.CoreV1().Pods(e.ns).Delete(context.Background(), victim.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := e.waitEcho(3, 90*time.Second); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Second)
			l.noFailures(t)
		}},
		{"self-healing: a killed container restarts, traffic moves meanwhile", full, killContainer},
		{"scale 3 -> 10 -> 1 under a request loop: no failed request", notVXLAN, func(t *testing.T, e *env) {
			l := e.startLoop(t, "loop-scale", e.nodes[0], "--interval", "20ms", e.clusterIP(t, "echo")+":80")
			for _, n := range []int32{10, 1} {
				e.scale(t, n)
				if err := e.waitEcho(n, 3*time.Minute); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * time.Second)
				r := l.noFailures(t)
				t.Logf("at %d replicas: %s", n, r.progress)
			}
			r := l.noFailures(t)
			if !strings.Contains(r.progress, "echo-") {
				t.Fatalf("no answers recorded: %s", r.progress)
			}
			e.scale(t, 3)
			if err := e.waitEcho(3, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
		}},
		{"rolling update under a request loop: no failed request", full, func(t *testing.T, e *env) {
			ctx := context.Background()
			before := names(e.echoPods(t))
			l := e.startLoop(t, "loop-rollout", e.nodes[2], "--interval", "20ms", e.clusterIP(t, "echo")+":80")
			patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"e2e/rollout":"%d"}}}}}`, time.Now().UnixNano())
			if _, err := e.cs.AppsV1().Deployments(e.ns).Patch(ctx, "echo", "application/strategic-merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := e.waitEcho(3, 3*time.Minute); err != nil {
				t.Fatal(err)
			}
			for _, n := range names(e.echoPods(t)) {
				if slices.Contains(before, n) {
					t.Fatalf("pod %s survived the rollout (before: %v)", n, before)
				}
			}
			time.Sleep(2 * time.Second)
			l.noFailures(t)
		}},
		{"restart every agent under load: established connections survive", full, func(t *testing.T, e *env) {
			addr := e.clusterIP(t, "echo")
			held := e.startLoop(t, "loop-held", e.nodes[0], "--protocol", "tcp", "--persistent", "--connections", "3", "--interval", "100ms", addr+":7000")
			fresh := e.startLoop(t, "loop-fresh", e.nodes[1], "--interval", "50ms", addr+":80")
			for _, node := range e.nodes {
				if err := cluster.StopAgent(e.cfg, node); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * time.Second)
				if _, err := cluster.Up(context.Background(), e.cfg); err != nil {
					t.Fatalf("restart %s: %v", node, err)
				}
				if err := e.c.WaitNodesReady(time.Minute); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(3 * time.Second)
			r := held.noFailures(t)
			if len(r.connected) != 3 {
				t.Fatalf("the held connections were reopened: %v", r.connected)
			}
			fresh.noFailures(t)
		}},
		{"stop a node's agent: its endpoints leave, the pod is replaced elsewhere", full, stopAgent},
		{"switch every node to the other service mode: the old one leaves nothing", func(cc clusterCase) bool { return !full(cc) && notInstalled(cc) }, switchMode},
	}
}

func names(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

func (e *env) scale(t *testing.T, n int32) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if _, err := e.cs.AppsV1().Deployments(e.ns).Patch(context.Background(), "echo", "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// killContainer SIGKILLs one echo container's process from the host, as the
// OOM killer or an operator would: the kubelet restarts it, and meanwhile the
// Service sends requests to the others.
func killContainer(t *testing.T, e *env) {
	ctx := context.Background()
	victim := e.echoPods(t)[0]
	l := e.startLoop(t, "loop-kill", e.nodes[0], "--interval", "50ms", e.clusterIP(t, "echo")+":80")
	pid, err := servePID(string(victim.UID))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := eventually(time.Minute, func() error {
		p, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, victim.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cs := p.Status.ContainerStatuses
		if len(cs) != 1 || cs[0].RestartCount < 1 || !cs[0].Ready {
			return fmt.Errorf("%s: %+v", victim.Name, cs)
		}
		if lt := cs[0].LastTerminationState.Terminated; lt == nil || lt.ExitCode != 137 {
			return fmt.Errorf("%s: last termination %+v, want exit 137", victim.Name, lt)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Requests may fail between the kill and the kubelet seeing the exit;
	// after that nothing may.
	time.Sleep(2 * time.Second)
	before := len(l.report(t).fails)
	time.Sleep(3 * time.Second)
	r := l.report(t)
	if len(r.fails) != before {
		t.Fatalf("requests still failing after the restart: %v", r.fails[before:])
	}
	if before > 40 {
		t.Fatalf("%d requests failed around the kill (2 s worth at most): %v", before, first(r.fails, 10))
	}
	t.Logf("%d requests failed around the kill; %s", before, r.progress)
}

// servePID finds the host pid of `capstan-echo serve` in the pod with uid.
func servePID(uid string) (int, error) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cg, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil || !strings.Contains(string(cg), "pod"+uid) {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join(d, "cmdline"))
		if strings.Contains(string(cmd), "serve") {
			return strconv.Atoi(filepath.Base(d))
		}
	}
	return 0, fmt.Errorf("no serve process in pod %s", uid)
}

// stopAgent stops the agent of a node holding an echo pod. The node goes
// silent, its pods become unready and leave the Service, the pod is evicted
// and replaced on another node; restarted, the agent removes what was evicted.
func stopAgent(t *testing.T, e *env) {
	ctx := context.Background()
	var victim corev1.Pod
	for _, p := range e.echoPods(t) {
		if p.Spec.NodeName != e.nodes[0] {
			victim = p
		}
	}
	if victim.Name == "" {
		t.Fatalf("every echo pod is on %s, where the clients run", e.nodes[0])
	}
	node := victim.Spec.NodeName
	l := e.startLoop(t, "loop-stop", e.nodes[0], "--interval", "50ms", e.clusterIP(t, "echo")+":80")
	if err := cluster.StopAgent(e.cfg, node); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			cluster.Up(context.Background(), e.cfg)
		}
	})
	// The pod leaves the Service once the node is found silent.
	if err := eventually(90*time.Second, func() error {
		p, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, victim.Name, metav1.GetOptions{})
		if err != nil {
			return nil // evicted and gone already
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionFalse {
				return nil
			}
		}
		return fmt.Errorf("%s on stopped %s still Ready", victim.Name, node)
	}); err != nil {
		t.Fatal(err)
	}
	// A replacement runs on another node, and the Service has 3 endpoints again.
	if err := eventually(90*time.Second, func() error {
		ready := 0
		for _, p := range e.echoPods(t) {
			if p.Name == victim.Name || p.Spec.NodeName == node {
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready < 3 {
			return fmt.Errorf("%d ready echo pods off %s, want 3", ready, node)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.waitEndpoints(t, "echo", 3)
	time.Sleep(2 * time.Second)
	ip := e.clusterIP(t, "echo")
	for i := 0; i < 15; i++ {
		out, err := e.connect("client-1", "http", ip+":80")
		if err != nil || out == victim.Name {
			t.Fatalf("request %d: %v %q (the pod on the stopped node must be out of the Service)", i, err, out)
		}
	}
	if _, err := cluster.Up(ctx, e.cfg); err != nil {
		t.Fatal(err)
	}
	restarted = true
	if err := e.c.WaitNodesReady(time.Minute); err != nil {
		t.Fatal(err)
	}
	// Back, the agent finishes the eviction: the old pod goes.
	if err := eventually(time.Minute, func() error {
		if _, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, victim.Name, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("%s still there", victim.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l.noFailures(t)
}

// switchMode restarts every agent in the other service mode and checks the
// old mode left nothing behind: no CAPSTAN iptables chains after iptables
// mode, no socket or tc links pinned after eBPF mode. Services must answer
// through the new mode.
func switchMode(t *testing.T, e *env) {
	to := map[string]string{"ebpf": "iptables", "iptables": "ebpf"}[e.cfg.Mode]
	for _, node := range e.nodes {
		if err := cluster.StopAgent(e.cfg, node); err != nil {
			t.Fatal(err)
		}
	}
	e.cfg.Mode = to
	if _, err := cluster.Up(context.Background(), e.cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.c.WaitNodesReady(time.Minute); err != nil {
		t.Fatal(err)
	}
	ip := e.clusterIP(t, "echo")
	for i, node := range e.nodes {
		if err := eventually(30*time.Second, func() error {
			rules, err := e.inNode(node, "iptables-save")
			if err != nil {
				return fmt.Errorf("iptables-save on %s: %v %s", node, err, rules)
			}
			links, _ := filepath.Glob(filepath.Join("/sys/fs/bpf/capstan", node, "links", "*"))
			var service []string
			for _, l := range links {
				// Tunnel and policy-only links stay in every mode.
				if b := filepath.Base(l); !strings.HasPrefix(b, "tunnel-") && !strings.HasPrefix(b, "policy-") {
					service = append(service, b)
				}
			}
			switch to {
			case "ebpf":
				if strings.Contains(rules, "CAPSTAN-") {
					return fmt.Errorf("%s still has iptables mode chains", node)
				}
				if len(service) == 0 {
					return fmt.Errorf("%s has no eBPF links pinned", node)
				}
			case "iptables":
				if len(service) > 0 {
					return fmt.Errorf("%s still has eBPF links pinned: %v", node, service)
				}
				if !strings.Contains(rules, "CAPSTAN-SVC-") {
					return fmt.Errorf("%s has no iptables service chains", node)
				}
			}
			client := fmt.Sprintf("client-%d", i+1)
			if out, err := e.connect(client, "http", ip+":80"); err != nil || !strings.HasPrefix(out, "echo-") {
				return fmt.Errorf("%s -> %s after the switch: %v %q", client, ip, err, out)
			}
			if out, err := e.inNode(node, "curl", "-s", "-m", "3", "http://"+ip+"/hostname"); err != nil || !strings.HasPrefix(out, "echo-") {
				return fmt.Errorf("%s -> %s after the switch: %v %q", node, ip, err, out)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}
