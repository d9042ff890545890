package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/capstan-net/capstan/control/server/servertest"
	"github.com/capstan-net/capstan/dataplane"
	"github.com/capstan-net/capstan/dataplane/ebpf"
)

const clientEnv = "CAPSTAN_DP_TEST_CLIENT"

// testServerArgs keep the control plane to what the tests do not do by hand:
// they write Pods, EndpointSlices and Nodes themselves, with no kubelet.
var testServerArgs = []string{"--kube-controller-manager-arg", "controllers=serviceaccount-controller,namespace-controller"}

func TestMain(m *testing.M) {
	if args := os.Getenv(clientEnv); args != "" {
		os.Exit(runClient(strings.Fields(args)))
	}
	os.Exit(m.Run())
}

// runClient is the test's client process, run inside the test's netns and cgroup:
//
//	tcp ADDR N      N connections in turn, each sending one line
//	udp ADDR N      N connected UDP sockets in turn, each sending one datagram
//	persist ADDR    one connection; each stdin line is sent and its answer printed
//
// Each answer is printed as "<peer address the socket reports> <answer>".
func runClient(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tcp|udp|persist ADDR [N]")
		return 2
	}
	mode, addr := args[0], args[1]
	n := 1
	if len(args) > 2 {
		n, _ = strconv.Atoi(args[2])
	}
	ask := func(c net.Conn, r *bufio.Reader, msg string) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			return err
		}
		var reply string
		if mode == "udp" {
			buf := make([]byte, 512)
			k, err := c.Read(buf)
			if err != nil {
				return err
			}
			reply = strings.TrimSpace(string(buf[:k]))
		} else {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			reply = strings.TrimSpace(line)
		}
		fmt.Printf("%s %s\n", c.RemoteAddr(), reply)
		return nil
	}
	switch mode {
	case "tcp", "udp":
		for i := range n {
			c, err := net.DialTimeout(mode, addr, 5*time.Second)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			err = ask(c, bufio.NewReader(c), fmt.Sprintf("hello-%d", i))
			c.Close()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	case "persist":
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		r := bufio.NewReader(c)
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			if err := ask(c, r, in.Text()); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	default:
		return 2
	}
	return 0
}

// testNetns is a network namespace of the test's own, kept alive by an open handle.
type testNetns struct {
	f *os.File
}

func (n *testNetns) path() string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), n.f.Fd()) }

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	type res struct {
		f   *os.File
		err error
	}
	ch := make(chan res)
	go func() {
		// The thread goes back to its namespace afterwards; ending it instead would kill the
		// API server child if this thread happened to fork it (servertest sets Pdeathsig).
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{err: err}
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- res{err: fmt.Errorf("unshare netns: %w", err)}
			return
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{f, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	ns := &testNetns{f: r.f}
	t.Cleanup(func() { r.f.Close() })
	return ns
}

// do runs fn on a thread inside the namespace; sockets made there stay in it.
func (n *testNetns) do(t *testing.T, fn func() error) {
	t.Helper()
	if err := inNetns(n.path(), fn); err != nil {
		t.Fatal(err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	// A failure, not a skip: this test exists to exercise the real kernel.
	if os.Geteuid() != 0 {
		t.Fatal("the dataplane integration test needs root")
	}
}

func mountBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	return dir
}

func cgroup2Mount(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if ok && strings.HasPrefix(post, "cgroup2 ") {
			return strings.Fields(pre)[4]
		}
	}
	t.Fatal("no cgroup2 mount")
	return ""
}

func newTestCgroup(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var own string
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			own = p
		}
	}
	dir, err := os.MkdirTemp(filepath.Join(cgroup2Mount(t), own), "capstan-dp-test-")
	if err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	return dir
}

// backendAddrs are the two pods, addresses on a veth in the test namespace.
var backendAddrs = []string{"10.244.0.10", "10.244.0.11"}

// startBackends sets up the namespace's devices and runs a TCP echo on :8080 and a UDP echo
// on :5353 at every backend address. Each answer starts with the address that answered.
func startBackends(t *testing.T, ns *testNetns) {
	t.Helper()
	var lns []io.Closer
	ns.do(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cap0"}, PeerName: "cap1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		for _, name := range []string{"cap0", "cap1"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		cap0, err := netlink.LinkByName("cap0")
		if err != nil {
			return err
		}
		for _, a := range backendAddrs {
			addr, _ := netlink.ParseAddr(a + "/24")
			if err := netlink.AddrAdd(cap0, addr); err != nil {
				return fmt.Errorf("add %s: %w", a, err)
			}
		}
		for _, a := range backendAddrs {
			tl, err := net.Listen("tcp", a+":8080")
			if err != nil {
				return err
			}
			ul, err := net.ListenPacket("udp", a+":5353")
			if err != nil {
				return err
			}
			lns = append(lns, tl, ul)
			go serveTCP(tl, a)
			go serveUDP(ul, a)
		}
		return nil
	})
	t.Cleanup(func() {
		for _, l := range lns {
			l.Close()
		}
	})
}

func serveTCP(l net.Listener, me string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			s := bufio.NewScanner(c)
			for s.Scan() {
				fmt.Fprintf(c, "%s %s\n", me, s.Text())
			}
		}()
	}
}

func serveUDP(c net.PacketConn, me string) {
	buf := make([]byte, 512)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		c.WriteTo([]byte(me+" "+strings.TrimSpace(string(buf[:n]))), from)
	}
}

// clientCmd prepares a client process in the namespace and cgroup; start it with ns.start.
func clientCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), clientEnv+"="+strings.Join(args, " "))
	return cmd
}

// start starts cmd in the namespace (a child inherits the namespace of the thread that forks
// it) and in the cgroup (clone3 with CLONE_INTO_CGROUP, so it never runs outside it).
func (n *testNetns) start(t *testing.T, cgroup string, cmd *exec.Cmd) {
	t.Helper()
	cg, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	// No Pdeathsig: it fires when the forking thread ends, and that thread is thrown away.
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	n.do(t, cmd.Start)
}

// runClient runs a one-shot client and returns its answers: peer address -> answering backend.
func (n *testNetns) runClient(t *testing.T, cgroup string, args ...string) [][2]string {
	t.Helper()
	cmd := clientCmd(args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	n.start(t, cgroup, cmd)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client %v: %v\n%s", args, err, errb.String())
	}
	var res [][2]string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("client answer %q", line)
		}
		res = append(res, [2]string{f[0], f[1]})
	}
	return res
}

// daemonRun is one run of the daemon inside the test process.
type daemonRun struct {
	once   sync.Once
	cancel context.CancelFunc
	exited chan struct{}
	err    error // Run's result, once exited is closed
	reg    *prometheus.Registry
}

func startDaemon(t *testing.T, cfg Config) *daemonRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &daemonRun{cancel: cancel, exited: make(chan struct{}), reg: prometheus.NewRegistry()}
	cfg.Registry = r.reg
	go func() {
		defer close(r.exited)
		r.err = Run(ctx, cfg)
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// check fails the test at once if the daemon has exited on its own, rather than letting a
// wait time out; an old kernel is a skip.
func (r *daemonRun) check(t *testing.T) {
	t.Helper()
	select {
	case <-r.exited:
		if errors.Is(r.err, ebpf.ErrNotSupported) {
			t.Skipf("kernel too old: %v", r.err)
		}
		t.Fatalf("daemon exited: %v", r.err)
	default:
	}
}

func (r *daemonRun) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case <-r.exited:
			if r.err != nil {
				t.Errorf("daemon: %v", r.err)
			}
		case <-time.After(30 * time.Second):
			t.Error("daemon did not stop")
		}
	})
}

// syncs reads the daemon's successful sync count from its metrics.
func (r *daemonRun) syncs(t *testing.T) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "capstan_dataplane_syncs_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == "success" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func waitFor(t *testing.T, d *daemonRun, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		d.check(t)
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pinnedBackends lists the backends the pinned maps give a frontend.
func pinnedBackends(t *testing.T, pinDir string, key ebpf.ServiceKey) []string {
	t.Helper()
	p, err := ebpf.OpenPinned(pinDir)
	if err != nil {
		return nil // not loaded yet
	}
	defer p.Close()
	svcs, err := p.Services()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.ServiceKey == key {
			var out []string
			for _, b := range s.Backends[:s.Active] {
				out = append(out, b.Addr.String())
			}
			return out
		}
	}
	return nil
}

func TestDaemonServesClusterIPAcrossRestart(t *testing.T) {
	requireRoot(t)
	// The API server is a child process: start it before any thread enters the test
	// namespace, so it listens where the daemon can reach it.
	srv := servertest.ForTest(t, testServerArgs...)
	cs := kubernetes.NewForConfigOrDie(srv.Config)
	ctx := context.Background()

	pinDir := mountBPFFS(t) + "/node-a"
	ns := newTestNetns(t)
	startBackends(t, ns)
	cgroup := newTestCgroup(t)

	svc, err := cs.CoreV1().Services("default").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Annotations: map[string]string{dataplane.AlgorithmAnnotation: "round-robin"}},
		Spec: v1.ServiceSpec{Ports: []v1.ServicePort{
			{Name: "tcp", Port: 80, Protocol: v1.ProtocolTCP},
			{Name: "udp", Port: 53, Protocol: v1.ProtocolUDP},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	if _, err := netip.ParseAddr(vip); err != nil {
		t.Fatalf("service got no ClusterIP: %q", vip)
	}
	endpoints := func(addrs ...string) []discovery.Endpoint {
		var eps []discovery.Endpoint
		for _, a := range addrs {
			eps = append(eps, discovery.Endpoint{Addresses: []string{a},
				Conditions: discovery.EndpointConditions{Ready: ptr(true)}, NodeName: ptr("node-a")})
		}
		return eps
	}
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-1", Labels: map[string]string{discovery.LabelServiceName: "echo"}},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints:   endpoints(backendAddrs...),
		Ports: []discovery.EndpointPort{
			{Name: ptr("tcp"), Port: ptr(int32(8080)), Protocol: ptr(v1.ProtocolTCP)},
			{Name: ptr("udp"), Port: ptr(int32(5353)), Protocol: ptr(v1.ProtocolUDP)},
		},
	}
	if slice, err = cs.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A service with a bad annotation gets a Warning event and the default algorithm.
	if _, err := cs.CoreV1().Services("default").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "odd", Annotations: map[string]string{dataplane.AlgorithmAnnotation: "fastest"}},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	cfg := Config{
		RestConfig:      srv.Config,
		NodeName:        "node-a",
		PinDir:          pinDir,
		CgroupDir:       cgroup,
		Devices:         []string{"cap1"},
		Netns:           ns.path(),
		NodeAddrs:       []netip.Addr{netip.MustParseAddr(backendAddrs[0])},
		MinSyncInterval: 50 * time.Millisecond,
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	d1 := startDaemon(t, cfg)
	tcpKey := ebpf.ServiceKey{Addr: netip.MustParseAddr(vip), Port: 80, Proto: ebpf.TCP}
	waitFor(t, d1, "the service in the maps", func() bool { return len(pinnedBackends(t, pinDir, tcpKey)) == 2 })

	// Round-robin over two backends: four connections, two each, and every socket reports
	// the service address as its peer, not the backend's.
	front := net.JoinHostPort(vip, "80")
	count := map[string]int{}
	for _, a := range ns.runClient(t, cgroup, "tcp", front, "4") {
		if a[0] != front {
			t.Errorf("TCP peer %s, want the service address %s", a[0], front)
		}
		count[a[1]]++
	}
	if count[backendAddrs[0]] != 2 || count[backendAddrs[1]] != 2 {
		t.Errorf("TCP answers by backend %v, want 2 each", count)
	}
	udpFront := net.JoinHostPort(vip, "53")
	count = map[string]int{}
	for _, a := range ns.runClient(t, cgroup, "udp", udpFront, "4") {
		if a[0] != udpFront {
			t.Errorf("UDP peer %s, want %s", a[0], udpFront)
		}
		count[a[1]]++
	}
	if count[backendAddrs[0]] != 2 || count[backendAddrs[1]] != 2 {
		t.Errorf("UDP answers by backend %v, want 2 each", count)
	}

	waitFor(t, d1, "a Warning event for the unknown algorithm", func() bool {
		evs, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == "odd" && e.Type == v1.EventTypeWarning && e.Reason == "UnknownLoadBalancingAlgorithm" {
				return true
			}
		}
		return false
	})

	checkLocalPolicy(t, d1, cs, ns, cgroup, pinDir)

	// A long-lived connection, then a daemon restart in its middle.
	persist := clientCmd("persist", front)
	stdin, err := persist.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := persist.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var perr strings.Builder
	persist.Stderr = &perr
	ns.start(t, cgroup, persist)
	var once sync.Once
	wait := func() {
		once.Do(func() {
			stdin.Close()
			if err := persist.Wait(); err != nil {
				t.Errorf("long-lived client: %v\n%s", err, perr.String())
			}
		})
	}
	t.Cleanup(wait)
	out := bufio.NewScanner(stdout)
	ask := func(msg string) string {
		t.Helper()
		if _, err := fmt.Fprintln(stdin, msg); err != nil {
			t.Fatalf("write to client: %v", err)
		}
		if !out.Scan() {
			wait()
			t.Fatalf("long-lived connection broke at %q: %v", msg, out.Err())
		}
		f := strings.Fields(out.Text())
		if len(f) != 3 || f[2] != msg {
			t.Fatalf("answer %q to %q", out.Text(), msg)
		}
		return f[1]
	}
	backend := ask("before")

	d1.stop(t)
	if got := ask("daemon-down"); got != backend {
		t.Fatalf("connection moved from %s to %s while the daemon was down", backend, got)
	}
	// Links are pinned: services keep working with no daemon at all.
	if a := ns.runClient(t, cgroup, "tcp", front, "1"); a[0][0] != front {
		t.Fatalf("new connection without a daemon: peer %s", a[0][0])
	}

	d2 := startDaemon(t, cfg)
	waitFor(t, d2, "the restarted daemon's first sync", func() bool { return d2.syncs(t) >= 1 })
	if got := ask("after-restart"); got != backend {
		t.Fatalf("connection moved from %s to %s across the restart", backend, got)
	}
	if got := len(pinnedBackends(t, pinDir, tcpKey)); got != 2 {
		t.Fatalf("restarted daemon left %d backends, want 2", got)
	}

	// The restarted daemon follows changes: drop the second backend.
	slice.Endpoints = endpoints(backendAddrs[0])
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d2, "the backend removal in the maps", func() bool { return len(pinnedBackends(t, pinDir, tcpKey)) == 1 })
	for _, a := range ns.runClient(t, cgroup, "tcp", front, "3") {
		if a[1] != backendAddrs[0] {
			t.Errorf("answer from %s after it was removed", a[1])
		}
	}
	if got := ask("end"); got != backend {
		t.Fatalf("connection moved to %s at the end", got)
	}
	wait()
	d2.stop(t)
	removeLinks(t, pinDir)
}

// removeLinks unpins the daemon's links so the programs detach now, not when the bpffs goes.
func removeLinks(t *testing.T, pinDir string) {
	t.Helper()
	dir := filepath.Join(pinDir, "links")
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Error(err)
	}
	if len(entries) != 7 {
		t.Errorf("%d links pinned, want 5 socket and 2 tc", len(entries))
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			t.Error(err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// checkLocalPolicy checks a LoadBalancer service with externalTrafficPolicy Local: its
// NodePort reaches only this node's endpoint while its ClusterIP reaches both, and its
// health-check port reports the one local endpoint.
func checkLocalPolicy(t *testing.T, d *daemonRun, cs kubernetes.Interface, ns *testNetns, cgroup, pinDir string) {
	t.Helper()
	ctx := context.Background()
	svc, err := cs.CoreV1().Services("default").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "lb"},
		Spec: v1.ServiceSpec{
			Type:                  v1.ServiceTypeLoadBalancer,
			ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
			Ports:                 []v1.ServicePort{{Port: 81, Protocol: v1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodePort, hcPort := svc.Spec.Ports[0].NodePort, svc.Spec.HealthCheckNodePort
	if nodePort == 0 || hcPort == 0 {
		t.Fatalf("server allocated nodePort %d, healthCheckNodePort %d", nodePort, hcPort)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "lb-1", Labels: map[string]string{discovery.LabelServiceName: "lb"}},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints: []discovery.Endpoint{
			{Addresses: []string{backendAddrs[0]}, Conditions: discovery.EndpointConditions{Ready: ptr(true)}, NodeName: ptr("node-a")},
			{Addresses: []string{backendAddrs[1]}, Conditions: discovery.EndpointConditions{Ready: ptr(true)}, NodeName: ptr("node-b")},
		},
		Ports: []discovery.EndpointPort{{Name: ptr(""), Port: ptr(int32(8080)), Protocol: ptr(v1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	npKey := ebpf.ServiceKey{Port: uint16(nodePort), Proto: ebpf.TCP}
	waitFor(t, d, "the NodePort in the maps", func() bool { return len(pinnedBackends(t, pinDir, npKey)) == 1 })
	cipKey := ebpf.ServiceKey{Addr: netip.MustParseAddr(svc.Spec.ClusterIP), Port: 81, Proto: ebpf.TCP}
	if got := pinnedBackends(t, pinDir, cipKey); len(got) != 2 {
		t.Fatalf("ClusterIP backends %v, want both", got)
	}

	// Traffic from this node and its pods takes the internal entry, with every endpoint, as
	// kube-proxy sends it to the cluster-wide endpoints.
	internal := npKey
	internal.Internal = true
	if got := pinnedBackends(t, pinDir, internal); len(got) != 2 {
		t.Fatalf("internal NodePort entry's backends %v, want both", got)
	}

	// Node addresses are where NodePorts answer; the socket load balancer translates them.
	front := net.JoinHostPort(backendAddrs[0], strconv.Itoa(int(nodePort)))
	for _, a := range ns.runClient(t, cgroup, "tcp", front, "4") {
		if a[1] != backendAddrs[0] && a[1] != backendAddrs[1] {
			t.Errorf("NodePort of a Local service answered by %s, not an endpoint", a[1])
		}
	}

	var code int
	var body string
	ns.do(t, func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(backendAddrs[0], strconv.Itoa(int(hcPort))), 5*time.Second)
		if err != nil {
			return fmt.Errorf("health check: %w", err)
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, string(b)
		return nil
	})
	if code != http.StatusOK || !strings.Contains(body, `"localEndpoints":1`) {
		t.Fatalf("health check answered %d %s", code, body)
	}
}
