//go:build netpol

// Package netpol is the NetworkPolicy reachability suite: the upstream
// Kubernetes model (namespaces x, y, z; pods a, b, c; ports 80 and 81 on TCP
// and UDP) on a fresh local 3-node cluster (native routing, eBPF), or on a
// running cluster (CAPSTAN_NETPOL_KUBECONFIG). Each case applies policies or
// relabels pods and namespaces, probes every pair of pods from inside the
// client pods, compares with the table the NetworkPolicy specification gives,
// and prints a table of cases, results and how long the changes took to hold.
//
//	go test -tags netpol -run 'TestExpectations|TestNetpol' ./test/netpol/   (make netpol)
//	CAPSTAN_NETPOL_CASES=regexp      only the cases it matches
//	CAPSTAN_NETPOL_KUBECONFIG=path   a running cluster (no node-exec there)
//	CAPSTAN_NETPOL_POD_CIDR=prefix   the pod CIDR, when nodes' podCIDRs do not tell
package netpol_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/clustertest"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

const (
	// probeTimeout is how long a probe waits for a connection or an answer.
	probeTimeout = time.Second
	// patience is how long after its changes a step retries mismatching
	// probes. Changes should hold within a second on every node; the suite
	// prints how long they took rather than failing on that.
	patience = 5 * time.Second
	// retryPause is how often a probe that differs from the table is tried
	// again: the resolution of the convergence times.
	retryPause = 50 * time.Millisecond
	// restorePatience is how long the deletion of a case's policies and the
	// return of its labels may take to show, when unready pods must become
	// Ready again first.
	restorePatience = 10 * time.Second
)

// suite is the cluster and the model every case shares.
type suite struct {
	c    *clustertest.Cluster
	m    *model
	echo string // capstan-echo for node-exec; "" on a cluster the suite did not bring up
	// noSCTP says why SCTP columns are not probed.
	noSCTP string
	// logOffsets are where each agent's log stood when the case began.
	logOffsets map[string]int64
	// built and ready are how long the build and the bring-up of the
	// cluster and the model took.
	built, ready time.Duration
	// probers are the client pods' probe sessions, by model pod index.
	probersMu sync.Mutex
	probers   map[int]*prober
}

type result struct {
	name           string
	ok             bool
	converge, took time.Duration // converge < 0: not measured
}

func TestNetpol(t *testing.T) {
	s := setup(t)
	var results []result
	if s.built > 0 {
		results = append(results, result{"build capstan and the test images", true, -1, s.built})
	}
	results = append(results, result{"cluster up, model ready, every pair reachable", !t.Failed(), -1, s.ready})
	if t.Failed() {
		printTable(t, results)
		t.FailNow()
	}
	only, err := regexp.Compile(os.Getenv("CAPSTAN_NETPOL_CASES"))
	if err != nil {
		t.Fatalf("CAPSTAN_NETPOL_CASES: %v", err)
	}
	for _, c := range cases() {
		if !only.MatchString(c.name) {
			continue
		}
		start := time.Now()
		converge := time.Duration(-1)
		ok := t.Run(c.name, func(t *testing.T) { converge = s.runCase(t, c) })
		if !c.changes() {
			converge = -1
		}
		results = append(results, result{c.name, ok, converge, time.Since(start)})
	}
	printTable(t, results)
}

func printTable(t *testing.T, results []result) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-96s %-6s %-9s %s\n", "CASE", "RESULT", "CONVERGE", "TIME")
	var worst result
	passed, failed := 0, 0
	for _, r := range results {
		res, conv := "pass", "-"
		if r.ok {
			passed++
		} else {
			res = "FAIL"
			failed++
		}
		if r.converge >= 0 {
			conv = r.converge.Round(10 * time.Millisecond).String()
			if r.ok && r.converge > worst.converge {
				worst = r
			}
		}
		fmt.Fprintf(&b, "%-96s %-6s %-9s %v\n", r.name, res, conv, r.took.Round(10*time.Millisecond))
	}
	// CONVERGE: from the change's API call returning to the probes from
	// which on every pair of the step matched (at most, as probes go out
	// every 50ms and take until they answer); the longest step of the case.
	if worst.name != "" {
		fmt.Fprintf(&b, "max convergence of the passing cases: %v (%s); the goal is 1s on every node, not asserted\n",
			worst.converge.Round(10*time.Millisecond), worst.name)
	}
	fmt.Fprintf(&b, "netpol: %d passed, %d failed\n", passed, failed)
	t.Log(b.String())
}

// setup brings the cluster up (or connects to the given one) and the model.
func setup(t *testing.T) *suite {
	start := time.Now()
	s := &suite{m: newModel(fmt.Sprintf("-%04x", rand.IntN(1<<16))), logOffsets: map[string]int64{}, probers: map[int]*prober{}}
	if kc := os.Getenv("CAPSTAN_NETPOL_KUBECONFIG"); kc != "" {
		c, err := clustertest.Existing(kc)
		if err != nil {
			t.Fatalf("setup: %v", err)
		}
		s.c = c
		t.Logf("running on the cluster of %s (nodes %v); node-exec checks are skipped", kc, c.Nodes)
	} else {
		tools, err := clustertest.Build(t.TempDir())
		if err != nil {
			t.Fatalf("setup: %v", err)
		}
		s.built = time.Since(start)
		dir := t.TempDir()
		// Name, underlay, port and directories apart from the e2e suite's,
		// so both can run at once.
		// CAPSTAN_NETPOL_MODE=iptables runs the suite on the policy-only programs that
		// mode loads beside its netfilter Services; CAPSTAN_NETPOL_ROUTING=vxlan on VXLAN.
		mode := cmp.Or(os.Getenv("CAPSTAN_NETPOL_MODE"), "ebpf")
		cfg := cluster.Config{
			Name: fmt.Sprintf("np%04x", rand.IntN(1<<16)), DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run"),
			Nodes: 3, Routing: cmp.Or(os.Getenv("CAPSTAN_NETPOL_ROUTING"), "native"), Mode: mode,
			Subnet: netip.MustParsePrefix(fmt.Sprintf("172.28.%d.0/24", 1+rand.IntN(250))),
			Port:   10000 + rand.IntN(10000), Binary: tools.Capstan, Images: []string{tools.Images},
		}
		// CAPSTAN_NETPOL_INSTALL=helm brings the cluster up with no network and installs
		// Capstan's chart on it (CAPSTAN_BIN_DIR: where make left helm and the node image).
		chart := installChart(t)
		if chart != nil {
			cfg.Network = "none"
			cfg.Images = append(cfg.Images, filepath.Join(filepath.Dir(chart.Helm), "images", "capstan.tar"))
		}
		t.Logf("cluster %s: underlay %s, API port %d, %s routing, %s mode, network %s", cfg.Name, cfg.Subnet, cfg.Port, cfg.Routing, cfg.Mode, cmp.Or(cfg.Network, "capstan"))
		c, err := clustertest.Up(t, cfg)
		if err != nil {
			t.Fatalf("setup: %v", err)
		}
		if chart != nil {
			if err := chart.Install(c); err != nil {
				t.Fatalf("setup: %v", err)
			}
		}
		s.c, s.echo = c, tools.Echo
	}
	// Before the cluster goes down.
	t.Cleanup(func() {
		for i := range s.m.pods {
			s.closeProber(i, nil)
		}
	})
	s.noSCTP = sctpMissing()
	t.Logf("SCTP: %s", s.noSCTP)
	if err := s.createModel(t); err != nil {
		s.c.LogAgents(t)
		t.Fatalf("setup: %v", err)
	}
	s.ready = time.Since(start) - s.built
	return s
}

// installChart is Capstan's chart when CAPSTAN_NETPOL_INSTALL=helm asks for
// it, nil otherwise.
func installChart(t *testing.T) *clustertest.Chart {
	switch v := os.Getenv("CAPSTAN_NETPOL_INSTALL"); v {
	case "":
		return nil
	case "helm":
	default:
		t.Fatalf("CAPSTAN_NETPOL_INSTALL=%s: want helm or nothing", v)
	}
	root, err := testbin.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := cmp.Or(os.Getenv("CAPSTAN_BIN_DIR"), filepath.Join(root, "bin"))
	for _, f := range []string{"helm", filepath.Join("images", "capstan.tar")} {
		if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
			t.Fatalf("%v: make helm node-image builds it", err)
		}
	}
	return &clustertest.Chart{Helm: filepath.Join(bin, "helm"), Root: root, Release: "capstan"}
}

// sctpMissing says why SCTP columns are not probed. The kernel of this
// machine is the nodes' kernel on a local cluster.
func sctpMissing() string {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
	if err != nil {
		return fmt.Sprintf("socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): %v: the kernel has no SCTP; SCTP columns are skipped", err)
	}
	syscall.Close(fd)
	return "the kernel has SCTP, but capstan-echo serves no SCTP yet; SCTP columns are skipped"
}

// createModel makes the namespaces, pods and Services, waits for them, and
// checks every pair of pods reaches the other on every port.
func (s *suite) createModel(t *testing.T) error {
	ctx := context.Background()
	cs := s.c.CS
	for _, ns := range modelNamespaces {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.m.real[ns], Labels: map[string]string{"ns": ns}}}
		if _, err := cs.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return err
		}
		if !s.c.Local() {
			t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(context.Background(), obj.Name, metav1.DeleteOptions{}) })
		}
	}
	nodes := slices.Clone(s.c.Nodes)
	slices.Sort(nodes)
	for i, p := range s.m.pods {
		// Each node gets one pod of each namespace and of each name.
		node := nodes[(i/len(modelPods)+i%len(modelPods))%len(nodes)]
		if _, err := cs.CoreV1().Pods(s.m.real[p.ns]).Create(ctx, s.m.podObject(p, node), metav1.CreateOptions{}); err != nil {
			return err
		}
		if _, err := cs.CoreV1().Services(s.m.real[p.ns]).Create(ctx, s.m.serviceObject(p), metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	if err := clustertest.Eventually(3*time.Minute, func() error {
		for _, p := range s.m.pods {
			pod, err := cs.CoreV1().Pods(s.m.real[p.ns]).Get(ctx, p.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !podReady(pod) || pod.Status.PodIP == "" {
				return fmt.Errorf("pod %s is %s, not Ready yet", p, pod.Status.Phase)
			}
			s.m.podIP[p], s.m.node[p] = pod.Status.PodIP, pod.Spec.NodeName
			svc, err := cs.CoreV1().Services(s.m.real[p.ns]).Get(ctx, "s-"+p.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.m.svcIP[p] = svc.Spec.ClusterIP
		}
		return nil
	}); err != nil {
		return fmt.Errorf("model pods: %w", err)
	}
	cidr, err := s.podCIDR()
	if err != nil {
		return err
	}
	s.m.podCIDR = cidr
	var b strings.Builder
	fmt.Fprintf(&b, "model (pod CIDR %s):\n%-6s %-16s %-16s %s\n", cidr, "POD", "IP", "SERVICE", "NODE")
	for _, p := range s.m.pods {
		fmt.Fprintf(&b, "%-6s %-16s %-16s %s\n", p, s.m.podIP[p], s.m.svcIP[p], s.m.node[p])
	}
	t.Log(b.String())
	// Every pair on every port, directly and through the Services, before
	// any policy: the workloads and the Service programming are ready.
	warm := step{what: "model ready, no policies", want: allowAll,
		cols: []column{tcp80, tcp81, udp80, udp81, svcTCP80, svcTCP81, svcUDP80, {81, corev1.ProtocolUDP, true}}}
	if _, ok := s.converge(t, warm, time.Now(), time.Minute); !ok {
		return errors.New("the model is not reachable without policies")
	}
	if s.echo != "" {
		// What nodeStillReaches checks under policies works without them.
		if err := s.nodesReachPods(anyPod); err != nil {
			return err
		}
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podCIDR is CAPSTAN_NETPOL_POD_CIDR, or the prefix that holds every node's
// podCIDR.
func (s *suite) podCIDR() (string, error) {
	if v := os.Getenv("CAPSTAN_NETPOL_POD_CIDR"); v != "" {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return "", fmt.Errorf("CAPSTAN_NETPOL_POD_CIDR: %w", err)
		}
		return p.Masked().String(), nil
	}
	nodes, err := s.c.CS.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	var ps []netip.Prefix
	for _, n := range nodes.Items {
		for _, c := range append([]string{n.Spec.PodCIDR}, n.Spec.PodCIDRs...) {
			if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
				ps = append(ps, p)
			}
		}
	}
	p, err := coveringPrefix(ps)
	if err != nil {
		return "", fmt.Errorf("nodes' podCIDRs (set CAPSTAN_NETPOL_POD_CIDR): %w", err)
	}
	for _, ip := range s.m.podIP {
		if !p.Contains(netip.MustParseAddr(ip)) {
			return "", fmt.Errorf("pod IP %s is outside the nodes' podCIDRs (%s): set CAPSTAN_NETPOL_POD_CIDR", ip, p)
		}
	}
	return p.String(), nil
}

// runCase runs a case's steps, restores the model after it, and returns the
// longest time a step took to converge.
//
// After the case its policies are deleted and its labels put back, and every
// pair must reach the other again on the ports the case probed, so that the
// next case starts from the plain model.
func (s *suite) runCase(t *testing.T, c netpolCase) time.Duration {
	s.markLogs()
	worst := s.runSteps(t, c)
	if err := s.restore(); err != nil {
		t.Errorf("restore the model after the case: %v", err)
		return -1
	}
	back := step{what: "policies deleted, labels restored", want: allowAll}
	for _, st := range c.steps {
		for _, col := range st.cols {
			if !slices.Contains(back.cols, col) {
				back.cols = append(back.cols, col)
			}
		}
	}
	d, ok := s.converge(t, back, time.Now(), restorePatience)
	if !ok {
		t.Errorf("after the case: not every pair reaches the other again")
		s.diagnose(t)
		return -1
	}
	if worst < 0 {
		return -1
	}
	return max(worst, d)
}

// changes reports whether a case changes anything, so that it has a
// convergence time.
func (c netpolCase) changes() bool {
	for _, st := range c.steps {
		if len(st.actions) > 0 {
			return true
		}
	}
	return false
}

// runSteps runs a case's steps and returns the longest time one took to
// converge, or -1 when one failed.
func (s *suite) runSteps(t *testing.T, c netpolCase) time.Duration {
	var worst time.Duration
	for i, st := range c.steps {
		d, ok := s.runStep(t, st)
		if !ok {
			t.Errorf("step %d (%s) failed", i+1, st.what)
			s.diagnose(t)
			return -1
		}
		worst = max(worst, d)
	}
	return worst
}

// runStep makes a step's changes and waits for its table.
func (s *suite) runStep(t *testing.T, st step) (time.Duration, bool) {
	ctx := context.Background()
	var after func(time.Time) (time.Duration, error)
	if st.hold != nil {
		var err error
		if after, err = st.hold(t, s); err != nil {
			t.Errorf("%s: %v", st.what, err)
			return 0, false
		}
	}
	for _, a := range st.actions {
		if err := a.do(ctx, s); err != nil {
			t.Errorf("%s: %v", a, err)
			return 0, false
		}
		t.Logf("%s", a)
	}
	done := time.Now()
	conv, ok := s.converge(t, st, done, patience)
	if !ok {
		return conv, false
	}
	if after != nil {
		d, err := after(done)
		if err != nil {
			t.Errorf("%s: %v", st.what, err)
			return conv, false
		}
		conv = max(conv, d)
	}
	if st.check != nil {
		if err := st.check(t, s); err != nil {
			t.Errorf("%s: %v", st.what, err)
			return conv, false
		}
	}
	return conv, true
}

// restore deletes the case's policies and puts the labels back.
func (s *suite) restore() error {
	ctx := context.Background()
	var errs []error
	for _, ns := range modelNamespaces {
		api := s.c.CS.NetworkingV1().NetworkPolicies(s.m.real[ns])
		errs = append(errs, api.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}))
		if err := labelsBack(s.m.nsLabels[ns], s.m.initialNSLabels(ns), func(patch []byte) error {
			_, err := s.c.CS.CoreV1().Namespaces().Patch(ctx, s.m.real[ns], types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range s.m.pods {
		if err := labelsBack(s.m.podLabels[p], initialPodLabels(p), func(patch []byte) error {
			_, err := s.c.CS.CoreV1().Pods(s.m.real[p.ns]).Patch(ctx, p.name, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}); err != nil {
			errs = append(errs, err)
		}
	}
	s.m.reset()
	return errors.Join(errs...)
}

// labelsBack patches labels from now back to initial, if they differ.
func labelsBack(now, initial map[string]string, patch func([]byte) error) error {
	change := map[string]string{}
	for k, v := range initial {
		if now[k] != v {
			change[k] = v
		}
	}
	for k := range now {
		if _, ok := initial[k]; !ok {
			change[k] = ""
		}
	}
	if len(change) == 0 {
		return nil
	}
	return patch(labelPatch(change))
}

// policiesYAML prints the policies in force.
func policiesYAML(m *model) string {
	var b strings.Builder
	for _, p := range m.sortedPolicies() {
		data, _ := yaml.Marshal(p)
		fmt.Fprintf(&b, "---\n%s", data)
	}
	if b.Len() == 0 {
		return "(none)\n"
	}
	return b.String()
}

// diagnose logs what a failed case leaves to look at: the policies, the
// labels, and what the agents logged meanwhile.
func (s *suite) diagnose(t *testing.T) {
	t.Logf("policies in force:\n%s", policiesYAML(s.m))
	var b strings.Builder
	for _, ns := range modelNamespaces {
		fmt.Fprintf(&b, "namespace %s (%s): %v\n", ns, s.m.real[ns], s.m.nsLabels[ns])
	}
	for _, p := range s.m.pods {
		fmt.Fprintf(&b, "pod %s %s on %s: %v\n", p, s.m.podIP[p], s.m.node[p], s.m.podLabels[p])
	}
	t.Logf("labels:\n%s", b.String())
	// Unready pods drop out of their Services: probes through those are
	// refused, whatever the policies.
	var unready []string
	for _, p := range s.m.pods {
		obj, err := s.c.CS.CoreV1().Pods(s.m.real[p.ns]).Get(context.Background(), p.name, metav1.GetOptions{})
		if err != nil || !podReady(obj) {
			unready = append(unready, p.String())
		}
	}
	if len(unready) > 0 {
		t.Logf("pods not Ready now (their Services have no endpoint): %v", unready)
	}
	if !s.c.Local() {
		return
	}
	for _, n := range s.c.Nodes {
		f, err := os.Open(filepath.Join(s.c.Cfg.DataDir, "cluster", "logs", n+".log"))
		if err != nil {
			continue
		}
		f.Seek(s.logOffsets[n], io.SeekStart)
		data, _ := io.ReadAll(f)
		f.Close()
		var notable []string
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(strings.ToLower(l), "polic") {
				notable = append(notable, l)
			}
		}
		if len(notable) > 0 {
			t.Logf("%s agent log during the case (warnings, errors, policy lines):\n%s", n, clustertest.TailLines(strings.Join(notable, "\n"), 20))
		}
	}
}

// markLogs records where the agents' logs stand.
func (s *suite) markLogs() {
	if !s.c.Local() {
		return
	}
	for _, n := range s.c.Nodes {
		if fi, err := os.Stat(filepath.Join(s.c.Cfg.DataDir, "cluster", "logs", n+".log")); err == nil {
			s.logOffsets[n] = fi.Size()
		}
	}
}

// Checks some steps run once their table holds.

// nodeStillReaches checks what no policy may block: the kubelet's readiness
// probes keep the namespace's pods Ready, and each pod's own node reaches
// it (node-exec, on a cluster the suite brought up).
func nodeStillReaches(ns string) func(t *testing.T, s *suite) error {
	return func(t *testing.T, s *suite) error {
		ctx := context.Background()
		var errs []error
		unready := map[string]bool{}
		// Longer than failureThreshold (3) readiness periods (1s).
		for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			pods, err := s.c.CS.CoreV1().Pods(s.m.real[ns]).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, p := range pods.Items {
				if !podReady(&p) && !unready[p.Name] {
					unready[p.Name] = true
					errs = append(errs, fmt.Errorf("pod %s/%s (on %s) is no longer Ready: the kubelet's probes from its node are blocked", ns, p.Name, p.Spec.NodeName))
				}
			}
		}
		if s.echo == "" {
			t.Logf("node-to-pod check skipped: no node-exec on this cluster")
			return errors.Join(errs...)
		}
		errs = append(errs, s.nodesReachPods(inNS(ns)))
		if errors.Join(errs...) == nil {
			t.Logf("pods of %s stayed Ready, and their nodes reach them", ns)
		}
		return errors.Join(errs...)
	}
}

// nodesReachPods checks that each model pod p picks is reached, on port 80
// over TCP and UDP, by a process of its own node (node-exec).
func (s *suite) nodesReachPods(pick peer) error {
	var errs []error
	for _, p := range s.m.pods {
		if !pick.matches(p) {
			continue
		}
		for _, proto := range []string{"tcp", "udp"} {
			addr := s.m.podIP[p] + ":80"
			out, err := s.c.InNode(s.m.node[p], s.echo, "connect", "--protocol", proto, "--timeout", "2s", addr)
			if err != nil || out != p.name {
				errs = append(errs, fmt.Errorf("node %s cannot reach its pod %s at %s/%s: %v %q", s.m.node[p], p, proto, addr, err, out))
			}
		}
	}
	return errors.Join(errs...)
}

// namespacesNamed checks the API server labelled each namespace with its name.
func namespacesNamed(t *testing.T, s *suite) error {
	for _, ns := range modelNamespaces {
		obj, err := s.c.CS.CoreV1().Namespaces().Get(context.Background(), s.m.real[ns], metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := obj.Labels[metadataNameLabel]; got != obj.Name {
			return fmt.Errorf("namespace %s has %s=%q, want the API server to set it to its name", obj.Name, metadataNameLabel, got)
		}
	}
	return nil
}

// lineClock timestamps lines as they arrive.
type lineClock struct {
	mu    sync.Mutex
	buf   []byte
	lines []timedLine
}

type timedLine struct {
	at   time.Time
	text string
}

func (c *lineClock) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	eachLine(&c.buf, p, func(l string) { c.lines = append(c.lines, timedLine{time.Now(), l}) })
	return len(p), nil
}

// eachLine appends p to *buf and calls each with every complete line in it.
func eachLine(buf *[]byte, p []byte, each func(line string)) {
	*buf = append(*buf, p...)
	for {
		i := bytes.IndexByte(*buf, '\n')
		if i < 0 {
			return
		}
		line := string((*buf)[:i])
		*buf = (*buf)[i+1:]
		each(line)
	}
}

// first is the first line with prefix, and whether there is one.
func (c *lineClock) first(prefix string, since time.Time) (timedLine, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.HasPrefix(l.text, prefix) && !l.at.Before(since) {
			return l, true
		}
	}
	return timedLine{}, false
}

func (c *lineClock) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, l := range c.lines {
		fmt.Fprintf(&b, "%s %s\n", l.at.Format("15:04:05.000"), l.text)
	}
	return b.String()
}

// holdConnection keeps a TCP connection from client to server's port 80
// (capstan-echo loop --persistent, one line echoed every 100ms) while the
// step's changes are made, and checks that it breaks afterwards: the
// changes deny it, and established connections must not outlive that.
func holdConnection(client, server podID) func(t *testing.T, s *suite) (func(time.Time) (time.Duration, error), error) {
	return func(t *testing.T, s *suite) (func(time.Time) (time.Duration, error), error) {
		addr := s.m.podIP[server] + ":80"
		var out lineClock
		ctx, cancel := context.WithCancel(context.Background())
		finished := make(chan error, 1)
		go func() {
			finished <- s.exec(ctx, client, nil, &out, &out, "/capstan-echo", "loop", "--protocol", "tcp", "--persistent",
				"--interval", "100ms", "--timeout", "1s", "--report", "500ms", "--duration", "30s", addr)
		}()
		stop := func() {
			cancel()
			<-finished
		}
		// Connected, and a few lines echoed without a failure.
		if err := clustertest.Eventually(20*time.Second, func() error {
			if _, ok := out.first("FAIL", time.Time{}); ok {
				return nil
			}
			if _, ok := out.first("PROGRESS", time.Time{}); !ok {
				return fmt.Errorf("no echo over the connection yet")
			}
			return nil
		}); err != nil {
			stop()
			return nil, fmt.Errorf("persistent connection %s -> %s: %v\n%s", client, server, err, out.String())
		}
		if l, ok := out.first("FAIL", time.Time{}); ok {
			stop()
			return nil, fmt.Errorf("persistent connection %s -> %s failed before any policy: %s\n%s", client, server, l.text, out.String())
		}
		t.Logf("persistent connection %s -> %s (%s) established", client, server, addr)
		return func(done time.Time) (time.Duration, error) {
			defer stop()
			var cut timedLine
			if err := clustertest.Eventually(patience, func() error {
				var ok bool
				if cut, ok = out.first("FAIL", done); !ok {
					return fmt.Errorf("the persistent connection %s -> %s still works %v after the policy denying it", client, server,
						time.Since(done).Round(time.Millisecond))
				}
				return nil
			}); err != nil {
				return 0, fmt.Errorf("%v\nloop output:\n%s", err, out.String())
			}
			// The FAIL line comes the loop's --timeout after the echo that
			// went unanswered was sent: the connection was cut before that.
			d := max(cut.at.Sub(done)-time.Second, 0)
			t.Logf("persistent connection cut within %v of the policy (%s %v after it, less the loop's 1s timeout)",
				d.Round(time.Millisecond), cut.text, cut.at.Sub(done).Round(time.Millisecond))
			return d, nil
		}, nil
	}
}
