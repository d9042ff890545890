package node_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// startCluster runs a server and count agents whose eth0s share one
// underlay bridge (172.31.X.0/24, the server on .1), pod traffic between
// them routed as routing says.
func startCluster(t *testing.T, count int, routing string) []*node {
	t.Helper()
	octet := 1 + rand.IntN(250)
	bridge := fmt.Sprintf("cpb%04x", rand.IntN(1<<16))
	hostIP := fmt.Sprintf("172.31.%d.1", octet)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	run("ip", "link", "add", bridge, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	run("ip", "addr", "add", hostIP+"/24", "dev", bridge)
	run("ip", "link", "set", bridge, "up")

	srv := servertest.Start(t, servertest.Options{
		BindAddress: hostIP,
		Controllers: []string{"namespace", "scheduler", "nodeipam", "garbagecollector", "endpointslice"},
	})
	cs := kubernetes.NewForConfigOrDie(srv.Config)
	var nodes []*node
	for i := 0; i < count; i++ {
		n := &node{t: t, name: fmt.Sprintf("node-%04x", rand.IntN(1<<16)), dir: t.TempDir(), routing: routing,
			srv: srv, cs: cs, hostIP: hostIP, nodeIP: fmt.Sprintf("172.31.%d.%d", octet, i+2)}
		n.hostIf = "cpt" + n.name[5:]
		nsName := "capstan-test-" + n.name
		run("ip", "netns", "add", nsName)
		n.netns = "/run/netns/" + nsName
		t.Cleanup(func() { exec.Command("ip", "netns", "del", nsName).Run() })
		run("ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", "eth0", "netns", nsName)
		t.Cleanup(func() { exec.Command("ip", "link", "del", n.hostIf).Run() })
		run("ip", "link", "set", n.hostIf, "master", bridge, "up")
		run("ip", "-n", nsName, "addr", "add", n.nodeIP+"/24", "dev", "eth0")
		run("ip", "-n", nsName, "link", "set", "eth0", "up")
		run("ip", "-n", nsName, "link", "set", "lo", "up")
		n.mountBPFFS()
		t.Cleanup(n.cleanup)
		n.startAgent(true)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.waitNodeReady()
	}
	return nodes
}

// httpGetRoot fetches a URL from the test's own (root) namespace, which
// reaches the nodes over the underlay bridge only.
func httpGetRoot(hostport, path string) (string, error) {
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + hostport + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// echoPod is a capstan-echo server pinned to a node.
func echoPod(name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "echo", Image: "capstan.local/echo:1.0", Args: []string{"serve"},
			}},
		},
	}
}

// TestCrossNode checks pod-to-pod traffic between two nodes in both
// routing modes, through the agents' own dataplanes.
func TestCrossNode(t *testing.T) {
	for _, routing := range []string{"native", "vxlan"} {
		t.Run(routing, func(t *testing.T) {
			nodes := startCluster(t, 2, routing)
			a, b := nodes[0], nodes[1]
			ctx := context.Background()
			pods := a.cs.CoreV1().Pods("default")
			for _, p := range []*corev1.Pod{echoPod("a", a.name), echoPod("a2", a.name), echoPod("b", b.name)} {
				if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			ips := map[string]string{}
			a.eventually(90*time.Second, "pods Running", func() (bool, string) {
				for _, name := range []string{"a", "a2", "b"} {
					p, err := pods.Get(ctx, name, metav1.GetOptions{})
					if err != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
						return false, name + ": " + statusSummary(p)
					}
					ips[name] = p.Status.PodIP
				}
				return true, ""
			})
			connect := func(from, to string) (string, error) {
				return a.kubectl("exec", from, "--", "/capstan-echo", "connect", "--protocol", "http", ips[to]+":8080")
			}
			for _, c := range [][2]string{{"a", "b"}, {"b", "a"}, {"a", "a2"}} {
				var out string
				var err error
				a.eventually(30*time.Second, c[0]+" reaches "+c[1], func() (bool, string) {
					out, err = connect(c[0], c[1])
					return err == nil && strings.TrimSpace(out) == c[1], fmt.Sprintf("%v %q", err, out)
				})
			}

			// The node itself (its own processes, as probes and host
			// sockets) reaches a pod on the other node.
			a.eventually(30*time.Second, "node A's host reaches pod b", func() (bool, string) {
				body, err := a.httpGet(ips["b"]+":8080", "/hostname")
				return err == nil && strings.TrimSpace(body) == "b", fmt.Sprintf("%v %q", err, body)
			})

			// `capstan dp routes` shows node A's pods and, in VXLAN mode,
			// where node B's pods are.
			out, err := exec.Command(capstanBin, "dp", "routes", "--pin-dir", a.pinDir()).CombinedOutput()
			if err != nil || !strings.Contains(string(out), ips["a"]) || !strings.Contains(string(out), ips["a2"]) {
				t.Fatalf("dp routes: %v\n%s", err, out)
			}
			if nb, _ := b.cs.CoreV1().Nodes().Get(ctx, b.name, metav1.GetOptions{}); routing == "vxlan" &&
				(nb == nil || !strings.Contains(string(out), nb.Spec.PodCIDR+" ") || !strings.Contains(string(out), b.nodeIP)) {
				t.Fatalf("dp routes lacks node %s's podCIDR via %s:\n%s", b.name, b.nodeIP, out)
			}
			out, err = exec.Command(capstanBin, "dp", "stats", "--pin-dir", a.pinDir()).CombinedOutput()
			counter := "redirect_peer"
			if routing == "vxlan" {
				counter = "tunnel_encap"
			}
			if err != nil || !regexp.MustCompile(`(?m)^`+counter+`\s+[1-9]`).Match(out) {
				t.Fatalf("dp stats: want %s counted: %v\n%s", counter, err, out)
			}

			// Leaving the cluster: the root namespace has no route to pod
			// CIDRs, so only a masqueraded connection to the API server's
			// address gets its answer.
			apiAddr := strings.TrimPrefix(a.srv.Config.Host, "https://")
			a.eventually(30*time.Second, "pod b reaches the API server address (masquerade)", func() (bool, string) {
				out, err := a.kubectl("exec", "b", "--", "/capstan-echo", "connect", "--protocol", "tcp", apiAddr)
				return err == nil, fmt.Sprintf("%v %q", err, out)
			})

			// NodePort from outside the cluster (the root namespace, over
			// the underlay) on every node, to backends on both nodes.
			svc, err := a.cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "echo"},
				Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "echo"},
					Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			port := svc.Spec.Ports[0].NodePort
			for _, n := range nodes {
				seen := map[string]bool{}
				a.eventually(30*time.Second, "NodePort on "+n.name+" reaching pods on both nodes", func() (bool, string) {
					body, err := httpGetRoot(fmt.Sprintf("%s:%d", n.nodeIP, port), "/hostname")
					if err == nil {
						seen[strings.TrimSpace(body)] = true
					}
					return seen["b"] && (seen["a"] || seen["a2"]), fmt.Sprintf("%v seen %v", err, seen)
				})
			}
		})
	}
}
