package servicebench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/capstan-net/capstan/test/bench/perfcluster"
)

const (
	perfNS    = "perf" // the measured Services sort after every filler ("fill")
	fillNS    = "fill"
	perfPort  = perfcluster.PerfPort
	sliceName = "moving-1"
)

// workload is the pods and Services of one mode's cluster: two servers (srv-a beside the
// client on the first node, srv-b on the second) and the measured Services.
type workload struct {
	cfg        Config
	c          *perfcluster.Cluster
	nodes      []string
	pods       map[string]perfcluster.Running
	clusterIPs map[string]string // perf Service -> ClusterIP
	nodePort   int32
	fillers    int // filler Services installed
}

func newWorkload(ctx context.Context, cfg Config, c *perfcluster.Cluster) (*workload, error) {
	w := &workload{cfg: cfg, c: c, nodes: c.Nodes, clusterIPs: map[string]string{}}
	if err := c.CreateNamespaces(ctx, perfNS, fillNS); err != nil {
		return nil, err
	}
	var pods []perfcluster.Pod
	for name, spec := range map[string]struct {
		node string
		args []string
	}{
		"srv-a":  {w.nodes[0], []string{"serve"}},
		"srv-b":  {w.nodes[1], []string{"serve"}},
		"client": {w.nodes[0], []string{"pause"}},
	} {
		pods = append(pods, perfcluster.Pod{Name: name, Node: spec.node, Labels: map[string]string{"role": name}, Args: spec.args})
	}
	var err error
	if w.pods, err = c.StartPods(ctx, perfNS, pods); err != nil {
		return nil, err
	}
	// New-connection runs close from the client side, leaving it a TIME_WAIT socket per
	// connection: without reuse the client runs out of ports to one destination after about
	// 470 connections a second. netperf's TCP_CRR users set the same.
	for _, from := range []perfcluster.From{w.pods["client"].From(), {Netns: w.c.Config.Name + "-outside"}} {
		if err := c.Sysctl(from, "net.ipv4.tcp_tw_reuse=1"); err != nil {
			return nil, err
		}
	}
	port := corev1.ServicePort{Name: "perf", Port: perfPort, TargetPort: intstr.FromInt32(perfPort)}
	for name, s := range map[string]corev1.ServiceSpec{
		"local":    {Selector: map[string]string{"role": "srv-a"}, Ports: []corev1.ServicePort{port}},
		"remote":   {Selector: map[string]string{"role": "srv-b"}, Ports: []corev1.ServicePort{port}},
		"nodeport": {Selector: map[string]string{"role": "srv-b"}, Ports: []corev1.ServicePort{port}, Type: corev1.ServiceTypeNodePort},
		// moving has a hand-written EndpointSlice the update measurement rewrites.
		"moving": {Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	} {
		svc, err := c.Client.CoreV1().Services(perfNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: s}, metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		w.clusterIPs[name] = svc.Spec.ClusterIP
		if name == "nodeport" {
			w.nodePort = svc.Spec.Ports[0].NodePort
		}
	}
	if _, err := c.Client.DiscoveryV1().EndpointSlices(perfNS).Create(ctx, slice(sliceName, "moving", 8080, w.pods["srv-a"].IP), metav1.CreateOptions{}); err != nil {
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

// untilAnswers probes from the first node (its netns and cgroup, so the node's socket load
// balancer applies).
func (w *workload) untilAnswers(ctx context.Context, addr, proto, want string, timeout time.Duration) error {
	return w.c.UntilAnswers(ctx, perfcluster.From{Node: w.nodes[0]}, addr, proto, want, timeout)
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
	svc, err := w.c.Client.CoreV1().Services(fillNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	var addrs []string
	if real {
		addrs = []string{w.pods["srv-a"].IP}
	} else {
		k := w.cfg.EndpointsMin + j%(w.cfg.EndpointsMax-w.cfg.EndpointsMin+1)
		for e := 0; e < k; e++ {
			// 10.255.0.0/16 is in no pod or node range: these endpoints never answer.
			addrs = append(addrs, fmt.Sprintf("10.255.%d.%d", (j*11+e)/250%250, 1+(j*11+e)%250))
		}
	}
	if _, err := w.c.Client.DiscoveryV1().EndpointSlices(fillNS).Create(ctx, slice(name+"-1", name, 8080, addrs...), metav1.CreateOptions{}); err != nil {
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
	s, err := w.c.Client.DiscoveryV1().EndpointSlices(perfNS).Get(ctx, sliceName, metav1.GetOptions{})
	if err != nil {
		return 0, err
	}
	target := "srv-b"
	if s.Endpoints[0].Addresses[0] == w.pods["srv-b"].IP {
		target = "srv-a"
	}
	s.Endpoints[0].Addresses = []string{w.pods[target].IP}
	start := time.Now()
	if _, err := w.c.Client.DiscoveryV1().EndpointSlices(perfNS).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return 0, err
	}
	if err := w.untilAnswers(ctx, w.clusterIPs["moving"]+":80", "http", target, time.Minute); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
