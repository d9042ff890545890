//go:build e2e

// Package e2e runs scenarios on a fresh local cluster (`capstan up`: three
// nodes in network namespaces, real containerd, etcd and kernel eBPF) and
// prints a per-scenario table of results and times.
package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/images/imagebuild"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

// env is the running cluster the scenarios share.
type env struct {
	cfg        cluster.Config
	cs         kubernetes.Interface
	kubeconfig string
	capstan    string
	nodes      []string
	nodeIPs    map[string]string
	ns         string
}

func (e *env) kubectl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.capstan, append([]string{"kubectl", "-n", e.ns}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.kubeconfig)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// connect runs capstan-echo connect in a pod and returns the answer.
func (e *env) connect(pod, proto, addr string) (string, error) {
	return e.kubectl("exec", pod, "--", "/capstan-echo", "connect", "--protocol", proto, addr)
}

// outside fetches a URL from the cluster's outside namespace.
func (e *env) outside(url string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", e.cfg.Name+"-outside", "curl", "-s", "-m", "3", url).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func TestE2E(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the e2e suite needs root")
	}
	socket := "/run/capstan/containerd/containerd.sock"
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("no containerd at %s: run scripts/containerd.sh start", socket)
	}
	root, err := testbin.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	capstan, err := testbin.Build(root, bin)
	if err != nil {
		t.Fatal(err)
	}
	images := filepath.Join(bin, "images.tar")
	wd, _ := os.Getwd()
	os.Chdir(root)
	err = imagebuild.WriteFile(context.Background(), imagebuild.Options{}, images)
	os.Chdir(wd)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := cluster.Config{
		Name: fmt.Sprintf("e2e%04x", rand.IntN(1<<16)), DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run"),
		Nodes: 3, Subnet: netip.MustParsePrefix(fmt.Sprintf("172.29.%d.0/24", 1+rand.IntN(250))),
		Port: 20000 + rand.IntN(10000), Binary: capstan, Images: []string{images}, ContainerdSocket: socket,
	}
	ctx := context.Background()
	t.Cleanup(func() {
		if err := cluster.Down(ctx, cfg); err != nil {
			t.Errorf("capstan down: %v", err)
		}
	})
	st, err := cluster.Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cfg: cfg, kubeconfig: cluster.Kubeconfig(cfg.DataDir), capstan: capstan, nodes: st.Nodes, nodeIPs: map[string]string{}, ns: "e2e"}
	rc, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	e.cs = kubernetes.NewForConfigOrDie(rc)
	if err := eventually(2*time.Minute, func() error {
		nodes, err := e.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP {
					e.nodeIPs[n.Name] = a.Address
				}
			}
		}
		if ready < len(st.Nodes) {
			return fmt.Errorf("%d of %d nodes Ready", ready, len(st.Nodes))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.setup(t)

	type result struct {
		name string
		ok   bool
		took time.Duration
	}
	var results []result
	for _, sc := range scenarios() {
		start := time.Now()
		ok := t.Run(sc.name, func(t *testing.T) { sc.run(t, e) })
		results = append(results, result{sc.name, ok, time.Since(start)})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-66s %-6s %s\n", "SCENARIO", "RESULT", "TIME")
	for _, r := range results {
		res := "pass"
		if !r.ok {
			res = "FAIL"
		}
		fmt.Fprintf(&b, "%-66s %-6s %v\n", r.name, res, r.took.Round(10*time.Millisecond))
	}
	t.Log(b.String())
}

// setup deploys three echo servers, one per node, and a client pod per node.
func (e *env) setup(t *testing.T) {
	ctx := context.Background()
	labels := map[string]string{"app": "echo"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(3)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name: "echo", Image: "capstan.local/echo:1.0", Args: []string{"serve"},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/readyz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1},
					}},
				},
			},
		},
	}
	if _, err := e.cs.AppsV1().Deployments(e.ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, node := range e.nodes {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("client-%d", i+1)}, Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			Containers:                    []corev1.Container{{Name: "c", Image: "capstan.local/echo:1.0", Args: []string{"pause"}}},
		}}
		if _, err := e.cs.CoreV1().Pods(e.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc := func(name, algorithm string, typ corev1.ServiceType, ports ...corev1.ServicePort) {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{Selector: labels, Type: typ, Ports: ports}}
		if algorithm != "" {
			s.Annotations = map[string]string{"lb.capstan.io/algorithm": algorithm}
		}
		if _, err := e.cs.CoreV1().Services(e.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	http := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}
	svc("echo", "", corev1.ServiceTypeClusterIP, http,
		corev1.ServicePort{Name: "tcp", Port: 7000, TargetPort: intstr.FromInt32(9000), Protocol: corev1.ProtocolTCP},
		corev1.ServicePort{Name: "udp", Port: 7000, TargetPort: intstr.FromInt32(9001), Protocol: corev1.ProtocolUDP})
	svc("echo-rr", "round-robin", corev1.ServiceTypeClusterIP, http)
	svc("echo-hash", "source-hash", corev1.ServiceTypeClusterIP, http)
	svc("echo-np", "", corev1.ServiceTypeNodePort, http)
	local := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo-local"}, Spec: corev1.ServiceSpec{
		Selector: labels, Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{http},
		ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}}
	affinity := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo-affinity"}, Spec: corev1.ServiceSpec{
		Selector: labels, Ports: []corev1.ServicePort{http}, SessionAffinity: corev1.ServiceAffinityClientIP}}
	for _, s := range []*corev1.Service{local, affinity} {
		if _, err := e.cs.CoreV1().Services(e.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := eventually(3*time.Minute, func() error {
		d, err := e.cs.AppsV1().Deployments(e.ns).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 3 {
			return fmt.Errorf("echo has %d ready replicas", d.Status.ReadyReplicas)
		}
		pods, err := e.cs.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning {
				return fmt.Errorf("%s is %s", p.Name, p.Status.Phase)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) echoPods(t *testing.T) []corev1.Pod {
	pods, err := e.cs.CoreV1().Pods(e.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			out = append(out, p)
		}
	}
	return out
}

func (e *env) clusterIP(t *testing.T, svc string) string {
	s, err := e.cs.CoreV1().Services(e.ns).Get(context.Background(), svc, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Spec.ClusterIP
}

type scenario struct {
	name string
	run  func(t *testing.T, e *env)
}

func scenarios() []scenario {
	return []scenario{
		{"pod to pod, same node and across nodes", func(t *testing.T, e *env) {
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
		{"ClusterIP from pods on every node, TCP and UDP on one port", func(t *testing.T, e *env) {
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
		{"NodePort from outside to every node", func(t *testing.T, e *env) {
			s, err := e.cs.CoreV1().Services(e.ns).Get(context.Background(), "echo-np", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for node, ip := range e.nodeIPs {
				url := fmt.Sprintf("http://%s:%d/hostname", ip, s.Spec.Ports[0].NodePort)
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
		{"externalTrafficPolicy Local: local endpoint only, client IP kept", func(t *testing.T, e *env) {
			s, err := e.cs.CoreV1().Services(e.ns).Get(context.Background(), "echo-local", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			onNode := map[string]string{}
			for _, p := range e.echoPods(t) {
				onNode[p.Spec.NodeName] = p.Name
			}
			outsideIP := e.cfg.Subnet.Addr().As4()
			outsideIP[3] = 250
			for node, ip := range e.nodeIPs {
				base := fmt.Sprintf("http://%s:%d", ip, s.Spec.Ports[0].NodePort)
				for i := 0; i < 4; i++ {
					var host string
					if err := eventually(20*time.Second, func() error {
						host, err = e.outside(base + "/hostname")
						if err != nil || host != onNode[node] {
							return fmt.Errorf("%s: %v %q, want the pod on %s (%s)", base, err, host, node, onNode[node])
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
		{"sessionAffinity ClientIP keeps a client on one backend", func(t *testing.T, e *env) {
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
		{"random spreads over every backend", func(t *testing.T, e *env) {
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
		{"round-robin rotates over every backend", func(t *testing.T, e *env) {
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
		{"source-hash keeps each client on one backend", func(t *testing.T, e *env) {
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
		{"self-healing: a deleted pod is replaced, traffic moves on", func(t *testing.T, e *env) {
			ctx := context.Background()
			victim := e.echoPods(t)[0]
			if err := e.cs.CoreV1().Pods(e.ns).Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			ip := e.clusterIP(t, "echo")
			// Requests keep being served while the pod goes and its replacement
			// comes. A request may fail in the moment between the pod's exit and
			// the endpoint update reaching the nodes (the zero-failure version of
			// this scenario is open work in [CLUSTER]); one retry within 5 s must
			// succeed.
			deadline := time.Now().Add(60 * time.Second)
			for {
				if err := eventually(5*time.Second, func() error {
					out, err := e.connect("client-2", "http", ip+":80")
					if err != nil || !strings.HasPrefix(out, "echo-") {
						t.Logf("request failed during the replacement: %v %q", err, out)
						return fmt.Errorf("%v %q", err, out)
					}
					return nil
				}); err != nil {
					t.Fatalf("service unavailable for 5 s during the replacement: %v", err)
				}
				pods := e.echoPods(t)
				replaced := len(pods) == 3
				for _, p := range pods {
					replaced = replaced && p.Name != victim.Name
				}
				if replaced {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no replacement for %s after 60s", victim.Name)
				}
			}
		}},
	}
}
