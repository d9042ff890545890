package policybench

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/dataplane/ebpf"
	"github.com/capstan-net/capstan/test/bench/perfcluster"
)

const (
	benchNS    = "polbench"
	serverPod  = "server"
	deniedPod  = "denied" // a pod no rule admits, whose probes show the policy in force
	admitName  = "allow-clients"
	clientRole = "client"
)

// Paths measured, in table order.
const (
	pathCross = "pod -> pod (cross node)"
	pathSame  = "pod -> pod (same node)"
)

// client is a client pod and the path it measures; node indexes the cluster's nodes (the
// server is on the second).
type client struct {
	pod, path string
	node      int
}

var clients = []client{{"client-cross", pathCross, 0}, {"client-same", pathSame, 1}}

// tests are measured in this order on each path.
var tests = []string{"crr", "rr"}

// workload is the server, the clients and the unadmitted pod on one cluster.
type workload struct {
	cfg  Config
	c    *perfcluster.Cluster
	pods map[string]perfcluster.Running
}

func newWorkload(ctx context.Context, cfg Config, c *perfcluster.Cluster) (*workload, error) {
	w := &workload{cfg: cfg, c: c}
	if err := c.CreateNamespaces(ctx, benchNS); err != nil {
		return nil, err
	}
	pods := []perfcluster.Pod{
		{Name: serverPod, Node: c.Nodes[1], Labels: map[string]string{"role": "server"}, Args: []string{"serve"}},
		{Name: deniedPod, Node: c.Nodes[0], Labels: map[string]string{"role": "denied"}, Args: []string{"pause"}},
	}
	for _, cl := range clients {
		pods = append(pods, perfcluster.Pod{Name: cl.pod, Node: c.Nodes[cl.node], Labels: map[string]string{"role": clientRole}, Args: []string{"pause"}})
	}
	var err error
	if w.pods, err = c.StartPods(ctx, benchNS, pods); err != nil {
		return nil, err
	}
	for _, cl := range clients {
		// New-connection runs close from the client side, leaving it a TIME_WAIT socket per
		// connection: without reuse the client runs out of ports to one destination.
		if err := c.Sysctl(w.pods[cl.pod].From(), "net.ipv4.tcp_tw_reuse=1"); err != nil {
			return nil, err
		}
		if err := c.UntilAnswers(ctx, w.pods[cl.pod].From(), w.target(), "tcp", "", 2*time.Minute); err != nil {
			return nil, fmt.Errorf("%s: %w", cl.pod, err)
		}
	}
	return w, nil
}

// target is the server's perf port, at its pod address.
func (w *workload) target() string {
	return w.pods[serverPod].IP + ":" + strconv.Itoa(perfcluster.PerfPort)
}

// measure installs each rule count in turn, round after round, and measures every path and
// test under it.
func (w *workload) measure(ctx context.Context, rep *Report) error {
	for round := 1; round <= w.cfg.Rounds; round++ {
		for _, n := range w.cfg.Rules {
			if err := w.level(ctx, rep, round, n); err != nil {
				return fmt.Errorf("round %d, %d rules: %w", round, n, err)
			}
		}
	}
	return nil
}

func (w *workload) level(ctx context.Context, rep *Report, round, n int) error {
	lvl, err := w.install(ctx, n)
	if err != nil {
		return err
	}
	lvl.Round = round
	w.cfg.Log.Info("policy in force", "round", round, "rules", n, "policies", lvl.Policies, "entries", lvl.Entries, "writes", lvl.Writes, "then enforced after", lvl.Enforced)
	rep.Levels = append(rep.Levels, lvl)
	for _, cl := range clients {
		for _, test := range tests {
			pr := perfcluster.PerfRun{Test: test, Addr: w.target(), Duration: w.cfg.Duration, Connections: w.cfg.Connections,
				Namespace: benchNS, Pod: cl.pod}
			log := w.cfg.Log.With("round", round, "rules", n, "path", cl.path, "test", test)
			res, cpu, err := w.c.Measure(ctx, pr, w.pods[serverPod].UID, log)
			if err != nil {
				return fmt.Errorf("%s %s: %w", cl.path, test, err)
			}
			log.Info("measured", "ops/s", int(res.OpsPerS), "p50", res.Latency.P50, "p99", res.Latency.P99)
			rep.Results = append(rep.Results, Measurement{Round: round, Rules: n, Path: cl.path, Test: test, Result: res, ServerCPU: cpu})
		}
	}
	return nil
}

// install replaces the namespace's policies with those of n rules and waits until the
// server's node enforces them.
func (w *workload) install(ctx context.Context, n int) (Level, error) {
	pc := w.c.Client.NetworkingV1().NetworkPolicies(benchNS)
	old, err := pc.List(ctx, metav1.ListOptions{})
	if err != nil {
		return Level{}, err
	}
	for _, p := range old.Items {
		if err := pc.Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			return Level{}, err
		}
	}
	// From a clean slate, so that the time to enforce is that of the whole set.
	if _, err := w.untilEnforced(ctx, 0); err != nil {
		return Level{}, fmt.Errorf("removing the previous policies: %w", err)
	}
	lvl := Level{Rules: n}
	if n == 0 {
		return lvl, nil
	}
	pols := policies(n, w.cfg.RulesPerPolicy)
	start := time.Now()
	// The policy admitting the clients is written last.
	for _, p := range pols {
		if _, err := pc.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return lvl, fmt.Errorf("create policy %s: %w", p.Name, err)
		}
	}
	written := time.Now()
	lvl.Policies, lvl.Writes = len(pols), written.Sub(start)
	inMaps, err := w.untilEnforced(ctx, n+len(clients))
	if err != nil {
		return lvl, err
	}
	lvl.Enforced = inMaps.Sub(written)
	lvl.Entries = n + len(clients)
	return lvl, nil
}

// untilEnforced waits until the server's node holds entries ingress entries for it (0: the
// server is not isolated), and returns when that was; then it checks that the clients reach the
// server, and that the unadmitted pod does exactly when the server is not isolated.
func (w *workload) untilEnforced(ctx context.Context, entries int) (time.Time, error) {
	isolated := entries > 0
	srv := w.pods[serverPod]
	pinDir := filepath.Join(daemon.DefaultPinRoot, srv.Node)
	addr, err := netip.ParseAddr(srv.IP)
	if err != nil {
		return time.Time{}, err
	}
	// The maps are read every 20 ms: the probes below take up to a second a round.
	err = perfcluster.PollEvery(ctx, 20*time.Millisecond, 3*time.Minute, func() error {
		pol, err := readPolicy(pinDir, addr)
		if err != nil {
			return err
		}
		if pol.IngressIsolated != isolated || len(pol.Ingress) != entries {
			return fmt.Errorf("the server's node holds %d ingress entries for it (isolated %v), want %d", len(pol.Ingress), pol.IngressIsolated, entries)
		}
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	inMaps := time.Now()
	return inMaps, perfcluster.Poll(ctx, time.Minute, func() error {
		for _, cl := range clients {
			if !w.c.Answers(w.pods[cl.pod].From(), w.target(), "tcp", "") {
				return fmt.Errorf("%s does not reach the server", cl.pod)
			}
		}
		if got := w.c.Answers(w.pods[deniedPod].From(), w.target(), "tcp", ""); got == isolated {
			return fmt.Errorf("pod %s reaches the server: %v, want %v", deniedPod, got, !isolated)
		}
		return nil
	})
}

func readPolicy(pinDir string, addr netip.Addr) (*ebpf.PodPolicy, error) {
	p, err := ebpf.OpenPinned(pinDir)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.PolicyFor(addr)
}

// policies are NetworkPolicies selecting the server with n ingress rules in all, perPolicy to
// a policy, none of which matches a client (each admits one TCP port from an unused /32),
// followed by one admitting the clients on the perf port.
func policies(n, perPolicy int) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for first := 0; first < n; first += perPolicy {
		p := policy(fmt.Sprintf("fill-%05d", first/perPolicy))
		for i := first; i < min(first+perPolicy, n); i++ {
			p.Spec.Ingress = append(p.Spec.Ingress, rule(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: fillerPeer(i).String()}}, int32(1024+i%60000)))
		}
		out = append(out, p)
	}
	admit := policy(admitName)
	admit.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{rule(networkingv1.NetworkPolicyPeer{
		PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": clientRole}}}, perfcluster.PerfPort)}
	return append(out, admit)
}

func policy(name string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
	}}
}

func rule(peer networkingv1.NetworkPolicyPeer, port int32) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{
		From:  []networkingv1.NetworkPolicyPeer{peer},
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(port))}},
	}
}

// fillerPeer is the i-th unused address: 10.255.0.0/16 is in no pod, service or node range.
func fillerPeer(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(i / 250), byte(1 + i%250)}), 32)
}
