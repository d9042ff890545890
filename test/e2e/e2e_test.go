//go:build e2e

// Package e2e runs scenarios on fresh local clusters (`capstan up`: three
// nodes in network namespaces, real containerd, etcd and kernel eBPF), once
// per routing and service mode, and prints a table of results and times.
package e2e_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/clustertest"
)

// clusterCase is one cluster the suite brings up; each scenario says which
// cases it runs in.
type clusterCase struct {
	name, routing, mode string
	// install: "helm" brings the cluster up with no network and installs
	// Capstan's chart on it.
	install string
}

var cases = []clusterCase{
	{"native/ebpf", "native", "ebpf", ""},
	{"vxlan/ebpf", "vxlan", "ebpf", ""},
	{"native/iptables", "native", "iptables", ""},
	{"helm/ebpf", "native", "ebpf", "helm"},
}

// env is the running cluster the scenarios of one case share.
type env struct {
	cc         clusterCase
	cfg        cluster.Config
	cs         kubernetes.Interface
	kubeconfig string
	capstan    string
	echo       string // capstan-echo for the host: the outside client
	nodes      []string
	nodeIPs    map[string]string
	ns         string
	c          *clustertest.Cluster // the same cluster, for the shared helpers
}

func (e *env) kubectl(args ...string) (string, error) {
	return e.c.Kubectl(append([]string{"-n", e.ns}, args...)...)
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
	return clustertest.Eventually(timeout, f)
}

type result struct {
	cluster, name string
	ok            bool
	took          time.Duration
}

func TestE2E(t *testing.T) {
	tools, err := clustertest.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// CAPSTAN_E2E_CASES=native/ebpf,... runs only those clusters.
	want := os.Getenv("CAPSTAN_E2E_CASES")
	var results []result
	for _, cc := range cases {
		if want != "" && !slices.Contains(strings.Split(want, ","), cc.name) {
			continue
		}
		t.Run(cc.name, func(t *testing.T) {
			results = append(results, runCase(t, cc, tools)...)
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-16s %-72s %-6s %s\n", "CLUSTER", "SCENARIO", "RESULT", "TIME")
	for _, r := range results {
		res := "pass"
		if !r.ok {
			res = "FAIL"
		}
		fmt.Fprintf(&b, "%-16s %-72s %-6s %v\n", r.cluster, r.name, res, r.took.Round(10*time.Millisecond))
	}
	t.Log(b.String())
}

// runCase brings one cluster up, runs its scenarios and takes it down.
func runCase(t *testing.T, cc clusterCase, tools *clustertest.Tools) []result {
	start := time.Now()
	dir := t.TempDir()
	cfg := cluster.Config{
		Name: fmt.Sprintf("e2e%04x", rand.IntN(1<<16)), DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run"),
		Nodes: 3, Routing: cc.routing, Mode: cc.mode,
		Subnet: netip.MustParsePrefix(fmt.Sprintf("172.29.%d.0/24", 1+rand.IntN(250))),
		Port:   20000 + rand.IntN(10000), Binary: tools.Capstan, Images: []string{tools.Images},
		// A stopped agent's node is declared unreachable, and its pods
		// evicted, within a scenario's patience; kubelets renew their leases
		// often enough for that grace period.
		ServerArgs: []string{"--kube-controller-manager-arg", "node-monitor-grace-period=10s", "--kube-apiserver-arg", "default-unreachable-toleration-seconds=5"},
		AgentArgs:  []string{"--kubelet-arg", "config-dir=" + kubeletDropIn(t, dir)},
	}
	if full(cc) {
		// The upstream specs' images (agnhost, busybox, nginx...).
		cfg.Images = append(cfg.Images, filepath.Join(upstreamBin(t), "images", "e2e-images.tar"))
	}
	if installed(cc) {
		cfg.Network = "none"
		cfg.Images = append(cfg.Images, filepath.Join(installBin(t), "images", "capstan.tar"))
	}
	ctx := context.Background()
	c, err := clustertest.Up(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cc: cc, cfg: cfg, kubeconfig: c.Kubeconfig, capstan: tools.Capstan, echo: tools.Echo, nodes: c.Nodes, nodeIPs: c.NodeIPs, ns: "e2e", cs: c.CS, c: c}
	if installed(cc) {
		e.install(t)
	}
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.setup(t)
	results := []result{{cc.name, "cluster up and workloads ready", !t.Failed(), time.Since(start)}}
	// CAPSTAN_E2E_SCENARIOS=regexp runs only the scenarios it matches.
	only := regexp.MustCompile(os.Getenv("CAPSTAN_E2E_SCENARIOS"))
	for _, sc := range scenarios() {
		if !sc.inCase(cc) || !only.MatchString(sc.name) {
			continue
		}
		start := time.Now()
		ok := t.Run(sc.name, func(t *testing.T) {
			defer func() {
				if t.Failed() {
					e.diagnose(t)
				}
			}()
			sc.run(t, e)
		})
		results = append(results, result{cc.name, sc.name, ok, time.Since(start)})
	}
	return results
}

// kubeletDropIn writes a kubelet configuration drop-in (the kubelet's own
// --config-dir) with a node lease short enough for a 10 s grace period:
// renewed every 2.5 s instead of 10 s.
func kubeletDropIn(t *testing.T, dir string) string {
	d := filepath.Join(dir, "kubelet.conf.d")
	conf := "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nnodeLeaseDurationSeconds: 10\nnodeStatusUpdateFrequency: 4s\n"
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "10-lease.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// diagnose logs what a failed scenario leaves to look at.
func (e *env) diagnose(t *testing.T) {
	out, _ := e.kubectl("get", "pods", "-o", "wide")
	t.Logf("pods:\n%s", out)
	out, _ = e.kubectl("get", "endpointslices", "-o", "wide")
	t.Logf("endpointslices:\n%s", out)
	out, _ = e.kubectl("get", "events", "--sort-by", ".lastTimestamp")
	t.Logf("events:\n%s", tailLines(out, 30))
	e.c.LogAgents(t)
}

func tailLines(s string, n int) string { return clustertest.TailLines(s, n) }

var echoLabels = map[string]string{"app": "echo"}

// echoDeployment is the Service backend: readiness-gated, and with a preStop
// pause so a terminating pod keeps serving until every node has dropped it
// from the Service, as zero-downtime Deployments do on Kubernetes.
func echoDeployment(replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: echoLabels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: echoLabels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To(int64(10)),
					Containers: []corev1.Container{{
						Name: "echo", Image: "capstan.local/echo:1.0", Args: []string{"serve"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/readyz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1},
						Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 4}}},
					}},
				},
			},
		},
	}
}

// setup deploys three echo servers and a client pod per node, and the Services.
func (e *env) setup(t *testing.T) {
	ctx := context.Background()
	if _, err := e.cs.AppsV1().Deployments(e.ns).Create(ctx, echoDeployment(3), metav1.CreateOptions{}); err != nil {
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
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{Selector: echoLabels, Type: typ, Ports: ports}}
		if algorithm != "" {
			s.Annotations = map[string]string{"lb.capstan.io/algorithm": algorithm}
		}
		if _, err := e.cs.CoreV1().Services(e.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	http := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}
	tcp := corev1.ServicePort{Name: "tcp", Port: 7000, TargetPort: intstr.FromInt32(9000), Protocol: corev1.ProtocolTCP}
	svc("echo", "", corev1.ServiceTypeClusterIP, http, tcp,
		corev1.ServicePort{Name: "udp", Port: 7000, TargetPort: intstr.FromInt32(9001), Protocol: corev1.ProtocolUDP})
	svc("echo-rr", "round-robin", corev1.ServiceTypeClusterIP, http)
	svc("echo-hash", "source-hash", corev1.ServiceTypeClusterIP, http)
	svc("echo-np", "", corev1.ServiceTypeNodePort, http)
	extra := []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "echo-local"}, Spec: corev1.ServiceSpec{
			Selector: echoLabels, Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{http},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}},
		{ObjectMeta: metav1.ObjectMeta{Name: "echo-affinity"}, Spec: corev1.ServiceSpec{
			Selector: echoLabels, Ports: []corev1.ServicePort{http}, SessionAffinity: corev1.ServiceAffinityClientIP}},
		// least-conn over the pods labelled lc=yes, which its scenario chooses.
		{ObjectMeta: metav1.ObjectMeta{Name: "echo-lc", Annotations: map[string]string{"lb.capstan.io/algorithm": "least-conn"}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo", "lc": "yes"}, Ports: []corev1.ServicePort{tcp}}},
	}
	for _, s := range extra {
		if _, err := e.cs.CoreV1().Services(e.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.waitEcho(3, 3*time.Minute); err != nil {
		e.diagnose(t)
		t.Fatal(err)
	}
	if err := eventually(time.Minute, func() error {
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
		e.diagnose(t)
		t.Fatal(err)
	}
}

// waitEcho waits until the echo Deployment has n ready, up-to-date replicas
// and no other pods (terminating ones included).
func (e *env) waitEcho(n int32, timeout time.Duration) error {
	ctx := context.Background()
	return eventually(timeout, func() error {
		d, err := e.cs.AppsV1().Deployments(e.ns).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ObservedGeneration < d.Generation || d.Status.ReadyReplicas != n || d.Status.UpdatedReplicas != n || d.Status.Replicas != n {
			return fmt.Errorf("echo: %d ready, %d updated, %d total replicas, want %d", d.Status.ReadyReplicas, d.Status.UpdatedReplicas, d.Status.Replicas, n)
		}
		pods, err := e.cs.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return err
		}
		if len(pods.Items) != int(n) {
			return fmt.Errorf("%d echo pods (terminating ones included), want %d", len(pods.Items), n)
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				return fmt.Errorf("%s is terminating", p.Name)
			}
		}
		return nil
	})
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

// inNode runs a command as a node's own process (`capstan node-exec`).
func (e *env) inNode(node string, args ...string) (string, error) {
	return e.c.InNode(node, args...)
}
