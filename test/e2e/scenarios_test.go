//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

type scenario struct {
	name string
	// in says which clusters run it; nil is all of them.
	in  func(clusterCase) bool
	run func(t *testing.T, e *env)
}

func (s scenario) inCase(cc clusterCase) bool { return s.in == nil || s.in(cc) }

// Which clusters a scenario runs in. The native eBPF cluster runs all of
// them; the others what their routing or mode changes.
func ebpfOnly(cc clusterCase) bool     { return cc.mode == "ebpf" }
func iptablesOnly(cc clusterCase) bool { return cc.mode == "iptables" }
func full(cc clusterCase) bool         { return cc.name == "native/ebpf" }
func notVXLAN(cc clusterCase) bool     { return cc.routing != "vxlan" }

func scenarios() []scenario {
	return slices.Concat(serviceScenarios(), standardScenarios(), dnsScenarios(), healingScenarios(), upstreamScenarios(), installScenarios())
}

func serviceScenarios() []scenario {
	return []scenario{
		{"pod to pod, same node and across nodes", nil, func(t *testing.T, e *env) {
			for _, p := range e.echoPods(t) {
				for _, client := range []string{"client-1", "client-2", "client-3"} {
					if err := eventually(20*time.Second, func() error {
						out, err := e.connect(client, "http", p.Status.PodIP+":8080")
						if err != nil || out != p.Name {
							return fmt.Errorf("%s -> %s (%s): %v %q", client, p.Name, p.Spec.NodeName, err, out)
						}
						return nil
					}); err != nil {
						t.Fatal(err)
					}
				}
			}
		}},
		{"ClusterIP from pods on every node, TCP and UDP on one port", nil, func(t *testing.T, e *env) {
			ip := e.clusterIP(t, "echo")
			for _, client := range []string{"client-1", "client-2", "client-3"} {
				for _, c := range []struct{ proto, addr string }{{"http", ip + ":80"}, {"tcp", ip + ":7000"}, {"udp", ip + ":7000"}} {
					if err := eventually(20*time.Second, func() error {
						out, err := e.connect(client, c.proto, c.addr)
						if err != nil || !strings.HasPrefix(out, "echo-") {
							return fmt.Errorf("%s %s %s: %v %q", client, c.proto, c.addr, err, out)
						}
						return nil
					}); err != nil {
						t.Fatal(err)
					}
				}
			}
		}},
		{"ClusterIP from a node's own network namespace", nil, func(t *testing.T, e *env) {
			e.clusterIPFromNodes(t, 20*time.Second)
		}},
		{"NodePort from outside to every node", nil, func(t *testing.T, e *env) {
			port := e.nodePort(t, "echo-np")
			for node, ip := range e.nodeIPs {
				url := fmt.Sprintf("http://%s:%d/hostname", ip, port)
				if err := eventually(20*time.Second, func() error {
					out, err := e.outside(url)
					if err != nil || !strings.HasPrefix(out, "echo-") {
						return fmt.Errorf("%s (%s): %v %q", url, node, err, out)
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"NodePort forwards segments above the MTU to another node's backend", nil, largeNodePort},
		{"externalIP from outside, entering every node, to one backend", nil, externalIP},
		{"externalTrafficPolicy Local: local endpoints only, client IP kept", nil, func(t *testing.T, e *env) {
			port := e.nodePort(t, "echo-local")
			onNode := map[string][]string{}
			for _, p := range e.echoPods(t) {
				onNode[p.Spec.NodeName] = append(onNode[p.Spec.NodeName], p.Name)
			}
			outsideIP := e.cfg.Subnet.Addr().As4()
			outsideIP[3] = 250
			for node, ip := range e.nodeIPs {
				base := fmt.Sprintf("http://%s:%d", ip, port)
				if len(onNode[node]) == 0 {
					// No local endpoint: the node does not answer.
					if out, err := e.outside(base + "/hostname"); err == nil {
						t.Fatalf("%s (%s, no local endpoint) answered %q", base, node, out)
					}
					continue
				}
				for i := 0; i < 4; i++ {
					if err := eventually(20*time.Second, func() error {
						host, err := e.outside(base + "/hostname")
						if err != nil || !slices.Contains(onNode[node], host) {
							return fmt.Errorf("%s: %v %q, want a pod on %s (%v)", base, err, host, node, onNode[node])
						}
						return nil
					}); err != nil {
						t.Fatal(err)
					}
				}
				peer, err := e.outside(base + "/clientip")
				if err != nil || !strings.HasPrefix(peer, netip.AddrFrom4(outsideIP).String()+":") {
					t.Fatalf("%s/clientip = %q, %v: want the outside client's address", base, peer, err)
				}
			}
		}},
		{"sessionAffinity ClientIP keeps a client on one backend", nil, func(t *testing.T, e *env) {
			ip := e.clusterIP(t, "echo-affinity")
			first := ""
			for i := 0; i < 6; i++ {
				out, err := e.connect("client-3", "http", ip+":80")
				if err != nil {
					t.Fatalf("request %d: %v %q", i, err, out)
				}
				if first == "" {
					first = out
				} else if out != first {
					t.Fatalf("affinity broken: %s then %s", first, out)
				}
			}
		}},
		{"random spreads over every backend", nil, func(t *testing.T, e *env) {
			// 30 draws from 3 backends miss one with probability 3*(2/3)^30, about 1e-5.
			ip := e.clusterIP(t, "echo")
			seen := map[string]int{}
			for i := 0; i < 30; i++ {
				out, err := e.connect("client-1", "http", ip+":80")
				if err != nil {
					t.Fatalf("request %d: %v %q", i, err, out)
				}
				seen[out]++
			}
			if len(seen) != 3 {
				t.Fatalf("30 random picks reached only %v", seen)
			}
		}},
		{"round-robin rotates over every backend", ebpfOnly, func(t *testing.T, e *env) {
			ip := e.clusterIP(t, "echo-rr")
			seen := map[string]int{}
			for i := 0; i < 9; i++ {
				out, err := e.connect("client-1", "http", ip+":80")
				if err != nil {
					t.Fatalf("request %d: %v %q", i, err, out)
				}
				seen[out]++
			}
			if len(seen) != 3 {
				t.Fatalf("9 requests reached %v, want each of 3 backends 3 times", seen)
			}
			for b, n := range seen {
				if n != 3 {
					t.Fatalf("backend %s got %d of 9: %v", b, n, seen)
				}
			}
		}},
		{"source-hash keeps each client on one backend", ebpfOnly, func(t *testing.T, e *env) {
			ip := e.clusterIP(t, "echo-hash")
			for _, client := range []string{"client-1", "client-2", "client-3"} {
				first := ""
				for i := 0; i < 5; i++ {
					out, err := e.connect(client, "http", ip+":80")
					if err != nil {
						t.Fatalf("%s: %v %q", client, err, out)
					}
					if first == "" {
						first = out
					} else if out != first {
						t.Fatalf("%s reached %s then %s", client, first, out)
					}
				}
			}
		}},
		{"least-conn sends new connections away from a busy backend", ebpfOnly, leastConn},
		{"iptables mode: round-robin falls back to random with a Warning event", iptablesOnly, func(t *testing.T, e *env) {
			if err := eventually(30*time.Second, func() error {
				evs, err := e.cs.CoreV1().Events(e.ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=echo-rr"})
				if err != nil {
					return err
				}
				for _, ev := range evs.Items {
					if ev.Type == corev1.EventTypeWarning && ev.Reason == "AlgorithmUnsupported" {
						t.Logf("event: %s", ev.Message)
						return nil
					}
				}
				return fmt.Errorf("no AlgorithmUnsupported Warning on echo-rr among %d events", len(evs.Items))
			}); err != nil {
				t.Fatal(err)
			}
			ip := e.clusterIP(t, "echo-rr")
			if out, err := e.connect("client-1", "http", ip+":80"); err != nil || !strings.HasPrefix(out, "echo-") {
				t.Fatalf("echo-rr: %v %q", err, out)
			}
		}},
	}
}

// leastConn holds connections open to one backend, adds two more backends,
// and checks new connections go to the new, idle ones. Counts are per node,
// so every client runs on node 1.
func leastConn(t *testing.T, e *env) {
	ctx := context.Background()
	pods := e.echoPods(t)
	if len(pods) < 3 {
		t.Fatalf("%d echo pods, want 3", len(pods))
	}
	label := func(p corev1.Pod, v string) {
		patch := fmt.Sprintf(`{"metadata":{"labels":{"lc":%s}}}`, v)
		if _, err := e.cs.CoreV1().Pods(e.ns).Patch(ctx, p.Name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, p := range pods {
			e.cs.CoreV1().Pods(e.ns).Patch(ctx, p.Name, "application/merge-patch+json", []byte(`{"metadata":{"labels":{"lc":null}}}`), metav1.PatchOptions{})
		}
	})
	busy := pods[0]
	label(busy, `"yes"`)
	e.waitEndpoints(t, "echo-lc", 1)
	addr := e.clusterIP(t, "echo-lc") + ":7000"
	hold := e.startLoop(t, "lc-hold", e.nodes[0], "--protocol", "tcp", "--persistent", "--connections", "4", "--interval", "500ms", addr)
	if err := eventually(30*time.Second, func() error {
		if r := hold.report(t); len(r.connected) < 4 {
			return fmt.Errorf("%d of 4 connections open", len(r.connected))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	label(pods[1], `"yes"`)
	label(pods[2], `"yes"`)
	e.waitEndpoints(t, "echo-lc", 3)
	time.Sleep(2 * time.Second) // the nodes' sync interval
	// With 4 connections on the busy backend and none on the others, the next
	// 6 go to the idle two; random would send none there with p = (2/3)^6.
	fresh := e.startLoop(t, "lc-new", e.nodes[0], "--protocol", "tcp", "--persistent", "--connections", "6", "--interval", "500ms", addr)
	var r loopReport
	if err := eventually(30*time.Second, func() error {
		if r = fresh.report(t); len(r.connected) < 6 {
			return fmt.Errorf("%d of 6 connections open", len(r.connected))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(r.connected, busy.Name) {
		t.Fatalf("a new connection went to %s, which holds 4: %v", busy.Name, r.connected)
	}
	t.Logf("held on %s; new connections on %v", busy.Name, r.connected)
}

// largeNodePort sends 20 kB requests and answers (GSO packets on the veths)
// through a NodePort whose one backend is on another node than the one
// entered: the NAT path must forward packets bigger than the MTU.
func largeNodePort(t *testing.T, e *env) {
	ctx := context.Background()
	pod := e.echoPods(t)[0]
	patch := `{"metadata":{"labels":{"np":"one"}}}`
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(ctx, pod.Name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cs.CoreV1().Pods(e.ns).Patch(ctx, pod.Name, "application/merge-patch+json", []byte(`{"metadata":{"labels":{"np":null}}}`), metav1.PatchOptions{})
		e.cs.CoreV1().Services(e.ns).Delete(ctx, "echo-one", metav1.DeleteOptions{})
	})
	svc, err := e.cs.CoreV1().Services(e.ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo-one"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "echo", "np": "one"},
		Ports: []corev1.ServicePort{{Name: "perf", Port: 5201, TargetPort: intstr.FromInt32(5201)}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.waitEndpoints(t, "echo-one", 1)
	for node, ip := range e.nodeIPs {
		addr := fmt.Sprintf("%s:%d", ip, svc.Spec.Ports[0].NodePort)
		if err := eventually(20*time.Second, func() error {
			out, err := exec.Command("ip", "netns", "exec", e.cfg.Name+"-outside", e.echo, "perf", addr, "--test", "rr", "--size", "20000", "--duration", "1s").CombinedOutput()
			if err != nil || !strings.Contains(string(out), `"errors":0,`) || strings.Contains(string(out), `"ops":0,`) {
				return fmt.Errorf("%s (%s, backend on %s): %v %s", addr, node, pod.Spec.NodeName, err, out)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// externalIP sends outside clients to a Service's externalIP through each node in turn
// (a /32 route in the outside namespace), with its one backend on one node: entering any
// other node, the traffic must be SNATed there so that the reply comes back the same way.
func externalIP(t *testing.T, e *env) {
	ctx := context.Background()
	pod := e.echoPods(t)[0]
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(ctx, pod.Name, "application/merge-patch+json", []byte(`{"metadata":{"labels":{"ext":"one"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	ext := e.cfg.Subnet.Addr().As4()
	ext[3] = 200 // on no interface: only the route below leads to it
	extIP := netip.AddrFrom4(ext).String()
	outsideNS := e.cfg.Name + "-outside"
	t.Cleanup(func() {
		exec.Command("ip", "-n", outsideNS, "route", "del", extIP+"/32").Run()
		e.cs.CoreV1().Pods(e.ns).Patch(ctx, pod.Name, "application/merge-patch+json", []byte(`{"metadata":{"labels":{"ext":null}}}`), metav1.PatchOptions{})
		e.cs.CoreV1().Services(e.ns).Delete(ctx, "echo-ext", metav1.DeleteOptions{})
	})
	if _, err := e.cs.CoreV1().Services(e.ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo-ext"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "echo", "ext": "one"}, ExternalIPs: []string{extIP},
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitEndpoints(t, "echo-ext", 1)
	for node, ip := range e.nodeIPs {
		if out, err := exec.Command("ip", "-n", outsideNS, "route", "replace", extIP+"/32", "via", ip).CombinedOutput(); err != nil {
			t.Fatalf("route %s via %s: %v %s", extIP, ip, err, out)
		}
		url := "http://" + extIP + "/hostname"
		if err := eventually(20*time.Second, func() error {
			out, err := e.outside(url)
			if err != nil || out != pod.Name {
				return fmt.Errorf("%s entering %s (backend on %s): %v %q, want %s", url, node, pod.Spec.NodeName, err, out, pod.Name)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) waitEndpoints(t *testing.T, svc string, n int) {
	t.Helper()
	if err := eventually(30*time.Second, func() error {
		slices, err := e.cs.DiscoveryV1().EndpointSlices(e.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + svc})
		if err != nil {
			return err
		}
		ready := 0
		for _, s := range slices.Items {
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					ready++
				}
			}
		}
		if ready != n {
			return fmt.Errorf("%s has %d ready endpoints, want %d", svc, ready, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) nodePort(t *testing.T, svc string) int32 {
	s, err := e.cs.CoreV1().Services(e.ns).Get(context.Background(), svc, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Spec.Ports[0].NodePort
}

// clusterIPFromNodes fetches the echo Service's ClusterIP from every node's
// own network namespace, as the node's processes would.
func (e *env) clusterIPFromNodes(t *testing.T, patience time.Duration) {
	t.Helper()
	ip := e.clusterIP(t, "echo")
	for _, node := range e.nodes {
		if err := eventually(patience, func() error {
			out, err := e.inNode(node, "curl", "-s", "-m", "3", "http://"+ip+"/hostname")
			if err != nil || !strings.HasPrefix(out, "echo-") {
				return fmt.Errorf("%s -> %s: %v %q", node, ip, err, out)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}
