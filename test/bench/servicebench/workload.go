package servicebench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/capstan-net/capstan/cluster"
)

const (
	perfNS    = "perf" // the measured Services sort after every filler ("fill")
	fillNS    = "fill"
	perfPort  = 5201
	image     = "capstan.local/echo:1.0"
	sliceName = "moving-1"
)

// workload is the pods and Services of one mode's cluster: two servers (srv-a beside the
// client on the first node, srv-b on the second) and the measured Services.
type workload struct {
	cfg        Config
	cc         cluster.Config
	nodes      []string
	cs         kubernetes.Interface
	kubeconfig string
	ips        map[string]string // pod -> IP
	uids       map[string]string // pod -> UID
	clusterIPs map[string]string // perf Service -> ClusterIP
	nodePort   int32
	nodeIPs    []string
	fillers    int // filler Services installed
}

func newWorkload(ctx context.Context, cfg Config, cc cluster.Config, nodes []string) (*workload, error) {
	w := &workload{cfg: cfg, cc: cc, nodes: nodes, kubeconfig: cluster.Kubeconfig(cc.DataDir),
		ips: map[string]string{}, uids: map[string]string{}, clusterIPs: map[string]string{}}
	rc, err := clientcmd.BuildConfigFromFlags("", w.kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 2000, 4000
	if w.cs, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, err
	}
	if err := w.waitNodes(ctx); err != nil {
		return nil, err
	}
	for _, ns := range []string{perfNS, fillNS} {
		if _, err := w.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	for name, spec := range map[string]struct {
		node string
		args []string
	}{
		"srv-a":  {nodes[0], []string{"serve"}},
		"srv-b":  {nodes[1], []string{"serve"}},
		"client": {nodes[0], []string{"pause"}},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"role": name}}, Spec: corev1.PodSpec{
			NodeName: spec.node, TerminationGracePeriodSeconds: ptr.To(int64(1)),
			Containers: []corev1.Container{{Name: "c", Image: image, Args: spec.args}},
		}}
		if _, err := w.cs.CoreV1().Pods(perfNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	if err := w.waitPods(ctx); err != nil {
		return nil, err
	}
	// New-connection runs close from the client side, leaving it a TIME_WAIT socket per
	// connection: without reuse the client runs out of ports to one destination after about
	// 470 connections a second. netperf's TCP_CRR users set the same.
	if err := w.twReuse(); err != nil {
		return nil, err
	}
	port := corev1.ServicePort{Name: "perf", Port: perfPort, TargetPort: intstr.FromInt32(perfPort)}
	for name, s := range map[string]corev1.ServiceSpec{
		"local":    {Selector: map[string]string{"role": "srv-a"}, Ports: []corev1.ServicePort{port}},
		"remote":   {Selector: map[string]string{"role": "srv-b"}, Ports: []corev1.ServicePort{port}},
		"nodeport": {Selector: map[string]string{"role": "srv-b"}, Ports: []corev1.ServicePort{port}, Type: corev1.ServiceTypeNodePort},
		// moving has a hand-written EndpointSlice the update measurement rewrites.
		"moving": {Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	} {
		svc, err := w.cs.CoreV1().Services(perfNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: s}, metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		w.clusterIPs[name] = svc.Spec.ClusterIP
		if name == "nodeport" {
			w.nodePort = svc.Spec.Ports[0].NodePort
		}
	}
	if _, err := w.cs.DiscoveryV1().EndpointSlices(perfNS).Create(ctx, slice(sliceName, "moving", 8080, w.ips["srv-a"]), metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	// Everything answers before anything is measured.
	for _, target := range []string{w.clusterIPs["local"], w.clusterIPs["remote"]} {
		if err := w.untilAnswers(ctx, target+":"+strconv.Itoa(perfPort), "tcp", "", 2*time.Minute); err != nil {
			return nil, err
		}
	}
	if err := w.untilAnswers(ctx, w.clusterIPs["moving"]+":80", "http", "srv-a", 2*time.Minute); err != nil {
		return nil, err
	}
	return w, nil
}

// slice is an EndpointSlice of service with one endpoint per address.
func slice(name, service string, port int32, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: "capstan-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return s
}

func (w *workload) waitNodes(ctx context.Context) error {
	return poll(ctx, 2*time.Minute, func() error {
		nodes, err := w.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		w.nodeIPs = nil
		ready := 0
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP && n.Name == w.nodes[0] {
					w.nodeIPs = append(w.nodeIPs, a.Address)
				}
			}
		}
		if ready < len(w.nodes) || len(w.nodeIPs) == 0 {
			return fmt.Errorf("%d of %d nodes ready", ready, len(w.nodes))
		}
		return nil
	})
}

func (w *workload) waitPods(ctx context.Context) error {
	return poll(ctx, 2*time.Minute, func() error {
		pods, err := w.cs.CoreV1().Pods(perfNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
				return fmt.Errorf("pod %s is %s", p.Name, p.Status.Phase)
			}
			w.ips[p.Name], w.uids[p.Name] = p.Status.PodIP, string(p.UID)
		}
		if len(w.ips) < 3 {
			return fmt.Errorf("%d of 3 pods running", len(w.ips))
		}
		return nil
	})
}

func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// fromNode runs the host's capstan-echo as a process of the first node (its netns and
// cgroup, so the node's socket load balancer applies), for probes that must be quick.
func (w *workload) fromNode(ctx context.Context, args ...string) (string, error) {
	cmd, done, err := cluster.NodeCommand(w.cc, w.nodes[0], append([]string{w.cfg.EchoBinary}, args...)...)
	if err != nil {
		return "", err
	}
	defer done()
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// answers reports whether addr answers (and, if want is set, with want).
func (w *workload) answers(ctx context.Context, addr, proto, want string) bool {
	out, err := w.fromNode(ctx, "connect", "--protocol", proto, "--timeout", "300ms", addr)
	return err == nil && (want == "" || out == want)
}

func (w *workload) untilAnswers(ctx context.Context, addr, proto, want string, timeout time.Duration) error {
	return poll(ctx, timeout, func() error {
		if !w.answers(ctx, addr, proto, want) {
			return fmt.Errorf("%s (%s) does not answer %q", addr, proto, want)
		}
		return nil
	})
}

// fill installs filler Services (selectorless, with EndpointSlices of EndpointsMin to
// EndpointsMax unreachable addresses) until there are n-1, the measured one making n. The
// last one written gets a real endpoint so its answering shows the whole batch programmed.
func (w *workload) fill(ctx context.Context, n int) (*Programming, error) {
	want := n - 1
	if want <= w.fillers {
		return nil, nil
	}
	start := time.Now()
	var last string
	jobs := make(chan int)
	errc := make(chan error, 1)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if err := w.createFiller(ctx, j, j == want, &mu, &last); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		}()
	}
	for j := w.fillers + 1; j < want; j++ {
		jobs <- j
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errc:
		return nil, err
	default:
	}
	// The last one after all the others, so its answering means all are programmed.
	if err := w.createFiller(ctx, want, true, &mu, &last); err != nil {
		return nil, err
	}
	written := time.Now()
	w.fillers = want
	if err := w.untilAnswers(ctx, last+":80", "http", "srv-a", 5*time.Minute); err != nil {
		return nil, fmt.Errorf("after installing %d services: %w", n, err)
	}
	done := time.Now()
	return &Programming{Services: n, Writes: written.Sub(start), AfterLastWrite: done.Sub(written), FromFirstWrite: done.Sub(start)}, nil
}

func (w *workload) createFiller(ctx context.Context, j int, real bool, mu *sync.Mutex, last *string) error {
	name := fmt.Sprintf("fill-%05d", j)
	svc, err := w.cs.CoreV1().Services(fillNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	var addrs []string
	if real {
		addrs = []string{w.ips["srv-a"]}
	} else {
		k := w.cfg.EndpointsMin + j%(w.cfg.EndpointsMax-w.cfg.EndpointsMin+1)
		for e := 0; e < k; e++ {
			// 10.255.0.0/16 is in no pod or node range: these endpoints never answer.
			addrs = append(addrs, fmt.Sprintf("10.255.%d.%d", (j*11+e)/250%250, 1+(j*11+e)%250))
		}
	}
	if _, err := w.cs.DiscoveryV1().EndpointSlices(fillNS).Create(ctx, slice(name+"-1", name, 8080, addrs...), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create endpointslice of %s: %w", name, err)
	}
	if real {
		mu.Lock()
		*last = svc.Spec.ClusterIP
		mu.Unlock()
	}
	return nil
}

// update moves the "moving" Service from srv-a to srv-b and times until traffic follows.
func (w *workload) update(ctx context.Context) (time.Duration, error) {
	s, err := w.cs.DiscoveryV1().EndpointSlices(perfNS).Get(ctx, sliceName, metav1.GetOptions{})
	if err != nil {
		return 0, err
	}
	target := "srv-b"
	if s.Endpoints[0].Addresses[0] == w.ips["srv-b"] {
		target = "srv-a"
	}
	s.Endpoints[0].Addresses = []string{w.ips[target]}
	start := time.Now()
	if _, err := w.cs.DiscoveryV1().EndpointSlices(perfNS).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return 0, err
	}
	if err := w.untilAnswers(ctx, w.clusterIPs["moving"]+":80", "http", target, time.Minute); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// perf runs capstan-echo perf in the client pod (or, outside, in the outside namespace).
func (w *workload) perf(ctx context.Context, outside bool, test, addr string) (Perf, error) {
	args := []string{"perf", addr, "--test", test, "--duration", w.cfg.Duration.String(), "--connections", strconv.Itoa(w.cfg.Connections)}
	var cmd *exec.Cmd
	if outside {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", w.cc.Name + "-outside", w.cfg.EchoBinary}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, w.cfg.Binary, append([]string{"kubectl", "-n", perfNS, "exec", "client", "--", "/capstan-echo"}, args...)...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+w.kubeconfig)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	runErr := cmd.Run()
	var p Perf
	if err := json.Unmarshal(lastLine(out.Bytes()), &p); err != nil {
		return p, fmt.Errorf("perf %s %s: %v: %s %s", test, addr, runErr, out.String(), errOut.String())
	}
	if p.Ops == 0 {
		return p, fmt.Errorf("perf %s %s: nothing got through: %s", test, addr, p.FirstError)
	}
	return p, nil
}

func lastLine(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return lines[len(lines)-1]
}

func (w *workload) twReuse() error {
	pid := podProcess(w.uids["client"], "pause")
	if pid == "" {
		return fmt.Errorf("no client process found")
	}
	for _, args := range [][]string{
		{"nsenter", "--net=/proc/" + pid + "/ns/net", "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"},
		{"ip", "netns", "exec", w.cc.Name + "-outside", "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %v: %s", args, err, out)
		}
	}
	return nil
}

// podProcess finds the host pid of the process of a pod whose command line has word.
func podProcess(uid, word string) string {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cg, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil || !strings.Contains(string(cg), "pod"+uid) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(d, "cmdline"))
		if strings.Contains(string(cmdline), word) {
			return filepath.Base(d)
		}
	}
	return ""
}

// cpuSeconds is the CPU time of the serve process in a pod, read from the host.
func (w *workload) cpuSeconds(pod string) float64 {
	pid := podProcess(w.uids[pod], "serve")
	if pid == "" {
		return 0
	}
	stat, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0
	}
	// Fields after the command's closing parenthesis: utime and stime are 14 and 15.
	_, rest, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}
