package iptables

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/capstan-net/capstan/dataplane"
	"github.com/capstan-net/capstan/internal/netnstest"
)

// The test cluster: one node namespace that the backend programs, three pod namespaces behind
// it (b1 and b2 on this node, b3 pretending to be on another: only the State says so) and an
// outside client on a shared link.
var (
	testClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	gatewayIP       = netip.MustParseAddr("10.244.0.1") // the node's address towards pods
	nodeIP          = netip.MustParseAddr("192.168.50.1")
	clientIP        = netip.MustParseAddr("192.168.50.2")
	podIPs          = map[string]netip.Addr{
		"b1": netip.MustParseAddr("10.244.1.1"),
		"b2": netip.MustParseAddr("10.244.1.2"),
		"b3": netip.MustParseAddr("10.244.2.3"),
	}
)

type testCluster struct {
	node, client *netnstest.NS
	pods         map[string]*netnstest.NS
}

func newTestCluster(t *testing.T) *testCluster {
	t.Helper()
	c := &testCluster{node: netnstest.New(t, "node"), client: netnstest.New(t, "client"), pods: make(map[string]*netnstest.NS)}
	any4 := netip.MustParsePrefix("0.0.0.0/0")

	netnstest.Veth(t, c.node, "vc", c.client, "eth0")
	c.node.AddAddr(t, "vc", netip.PrefixFrom(nodeIP, 24))
	c.client.AddAddr(t, "eth0", netip.PrefixFrom(clientIP, 24))
	c.client.Route(t, "eth0", any4, nodeIP)
	// The node needs a route to ClusterIPs for its own connections to get as far as the
	// nat OUTPUT chain; the client namespace is as good a default as any.
	c.node.Route(t, "vc", any4, clientIP)
	c.node.Sysctl(t, "ipv4/ip_forward", "1", "ipv4/conf/all/rp_filter", "0", "ipv4/conf/default/rp_filter", "0",
		// A ClusterIP without endpoints is routed back out of vc: the ICMP redirect that
		// would cause spends the per-peer ICMP budget the REJECT's port-unreachable needs.
		"ipv4/conf/all/send_redirects", "0", "ipv4/conf/vc/send_redirects", "0",
		// Several rejects to one client in a row must not be rate-limited either.
		"ipv4/icmp_ratelimit", "0")

	for _, name := range []string{"b1", "b2", "b3"} {
		ip := podIPs[name]
		pod := netnstest.New(t, name)
		host := "v" + name
		netnstest.Veth(t, c.node, host, pod, "eth0")
		pod.AddAddr(t, "eth0", netip.PrefixFrom(ip, 32))
		pod.Route(t, "eth0", netip.PrefixFrom(gatewayIP, 32), netip.Addr{})
		pod.Route(t, "eth0", any4, gatewayIP)
		c.node.AddAddr(t, host, netip.PrefixFrom(gatewayIP, 32))
		c.node.Route(t, host, netip.PrefixFrom(ip, 32), netip.Addr{})
		c.node.Sysctl(t, "ipv4/conf/"+host+"/rp_filter", "0")
		serve(t, pod, "tcp", ip.String()+":8080", name)
		serve(t, pod, "udp", ip.String()+":5353", name)
		c.pods[name] = pod
	}
	serve(t, c.client, "tcp", clientIP.String()+":9000", "client")
	return c
}

func (c *testCluster) config(t *testing.T) Config {
	return Config{Netns: c.node.Path(), ClusterCIDR: testClusterCIDR, Masquerade: true, Logger: testLogger(t)}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// podTargets are usable targets on port 8080 (or port) of the named pods.
func podTargets(port uint16, names ...string) []dataplane.Target {
	var out []dataplane.Target
	for _, n := range names {
		out = append(out, dataplane.Target{Addr: podIPs[n], Port: port, Usable: true})
	}
	return out
}

func tcpService(name, clusterIP string) *dataplane.ServicePort {
	return &dataplane.ServicePort{Name: spName(name, "http", v1.ProtocolTCP), ClusterIPs: addrs(clusterIP),
		Port: 80, Protocol: v1.ProtocolTCP, Algorithm: dataplane.AlgorithmRandom}
}

func testState() *dataplane.State {
	all := podTargets(8080, "b1", "b2", "b3")

	dns := &dataplane.ServicePort{Name: spName("dns", "dns", v1.ProtocolUDP), ClusterIPs: addrs("10.96.0.53"),
		Port: 53, Protocol: v1.ProtocolUDP, ClusterTargets: podTargets(5353, "b2"), ExternalTargets: podTargets(5353, "b2")}
	empty := tcpService("empty", "10.96.0.12")
	empty.NodePort = 30082
	local := tcpService("local", "10.96.0.13")
	local.NodePort, local.ExternalPolicyLocal = 30083, true
	local.ClusterTargets, local.ExternalTargets = all, podTargets(8080, "b1", "b2")
	localNone := tcpService("local-none", "10.96.0.14")
	localNone.NodePort, localNone.ExternalPolicyLocal = 30084, true
	localNone.ClusterTargets = podTargets(8080, "b3")
	self := tcpService("self", "10.96.0.15")
	self.ClusterTargets, self.ExternalTargets = podTargets(8080, "b1"), podTargets(8080, "b1")
	sticky := tcpService("sticky", "10.96.0.11")
	sticky.AffinityTimeout = 10 * time.Minute
	sticky.ClusterTargets, sticky.ExternalTargets = all, all
	web := tcpService("web", "10.96.0.10")
	web.NodePort, web.ExternalIPs = 30080, addrs("203.0.113.10")
	// A terminating endpoint nobody answers at: a connection sent there would time out.
	withTerm := append(slices.Clone(all), dataplane.Target{Addr: netip.MustParseAddr("10.244.9.9"), Port: 8080})
	web.ClusterTargets, web.ExternalTargets = withTerm, withTerm

	return &dataplane.State{
		NodeName:  "node-a",
		NodeAddrs: []netip.Addr{nodeIP},
		Services:  []*dataplane.ServicePort{dns, empty, local, localNone, self, sticky, web},
	}
}

// askN connects n times and returns the replies; every connection must succeed.
func askN(t *testing.T, ns *netnstest.NS, network, dst string, n int) []reply {
	t.Helper()
	var out []reply
	for range n {
		r, err := ask(ns, network, dst, 3*time.Second)
		if err != nil {
			t.Fatalf("%s %s from %s: %v", network, dst, ns.Name, err)
		}
		out = append(out, r)
	}
	return out
}

// servers counts replies per server.
func servers(rs []reply) map[string]int {
	m := make(map[string]int)
	for _, r := range rs {
		m[r.server]++
	}
	return m
}

func wantServers(t *testing.T, rs []reply, want ...string) {
	t.Helper()
	got := servers(rs)
	if len(got) != len(want) {
		t.Errorf("servers %v, want each of %v", got, want)
	}
	for _, w := range want {
		if got[w] == 0 {
			t.Errorf("servers %v, want each of %v", got, want)
		}
	}
}

func wantPeers(t *testing.T, rs []reply, want netip.Addr) {
	t.Helper()
	for _, r := range rs {
		if r.peer.Addr() != want {
			t.Errorf("server %s saw %s, want %s", r.server, r.peer, want)
		}
	}
}

// saveRules is iptables-save of the node's filter and nat tables, rules and chain
// declarations only (no counters or dates).
func saveRules(t *testing.T, ns *netnstest.NS) []string {
	t.Helper()
	cmd := newCommands(Config{Netns: ns.Path()})
	var out []string
	for _, table := range []string{"filter", "nat"} {
		dump, err := cmd.saveTable(context.Background(), table)
		must(t, "iptables-save", err)
		for _, l := range strings.Split(string(dump), "\n") {
			if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":"+chainPrefix) {
				out = append(out, table+" "+l)
			}
		}
	}
	return out
}

func countPrefix(lines []string, sub string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

func TestSyncNetns(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t)
	ctx := context.Background()
	b, err := New(c.config(t))
	must(t, "new", err)
	st := testState()
	must(t, "sync", b.Sync(ctx, st))

	t.Run("idempotent", func(t *testing.T) {
		before := saveRules(t, c.node)
		must(t, "resync", b.Sync(ctx, st))
		after := saveRules(t, c.node)
		if !slices.Equal(before, after) {
			t.Errorf("a second sync of the same State changed the rules")
		}
		ours := countPrefix(after, " -A "+chainPrefix)
		if ours != b.RuleCount() {
			t.Errorf("RuleCount %d, kernel holds %d rules in our chains", b.RuleCount(), ours)
		}
		// The wanted jumps, each once.
		if jumps := builtinJumps(after); len(jumps) != len(wantedJumps()) {
			t.Errorf("jumps from built-in chains:\n%s\nwant %d", strings.Join(jumps, "\n"), len(wantedJumps()))
		}
	})

	t.Run("cluster IP", func(t *testing.T) {
		rs := askN(t, c.client, "tcp", "10.96.0.10:80", 30)
		wantServers(t, rs, "b1", "b2", "b3") // never the terminating endpoint: no timeout
		wantPeers(t, rs, gatewayIP)          // from outside the pod range: masqueraded
		// From a pod the source is kept, except when it reaches itself (hairpin).
		for _, r := range askN(t, c.pods["b3"], "tcp", "10.96.0.10:80", 12) {
			want := podIPs["b3"]
			if r.server == "b3" {
				want = gatewayIP
			}
			if r.peer.Addr() != want {
				t.Errorf("b3 via %s: server saw %s, want %s", r.server, r.peer, want)
			}
		}
		// The node's own connections go through nat OUTPUT.
		wantServers(t, askN(t, c.node, "tcp", "10.96.0.10:80", 20), "b1", "b2", "b3")
	})

	t.Run("hairpin", func(t *testing.T) {
		rs := askN(t, c.pods["b1"], "tcp", "10.96.0.15:80", 3)
		wantServers(t, rs, "b1")
		wantPeers(t, rs, gatewayIP)
	})

	t.Run("node port and external IP", func(t *testing.T) {
		rs := askN(t, c.client, "tcp", nodeIP.String()+":30080", 30)
		wantServers(t, rs, "b1", "b2", "b3")
		wantPeers(t, rs, gatewayIP)
		wantServers(t, askN(t, c.client, "tcp", "203.0.113.10:80", 30), "b1", "b2", "b3")
	})

	t.Run("session affinity", func(t *testing.T) {
		rs := askN(t, c.client, "tcp", "10.96.0.11:80", 20)
		if got := servers(rs); len(got) != 1 {
			t.Errorf("sticky service spread over %v", got)
		}
	})

	t.Run("udp", func(t *testing.T) {
		wantServers(t, askN(t, c.client, "udp", "10.96.0.53:53", 5), "b2")
	})

	t.Run("no endpoints refuses", func(t *testing.T) {
		for _, from := range []*netnstest.NS{c.client, c.node} {
			for _, dst := range []string{"10.96.0.12:80", nodeIP.String() + ":30082"} {
				start := time.Now()
				_, err := ask(from, "tcp", dst, 5*time.Second)
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("%s from %s: %v, want connection refused", dst, from.Name, err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("%s from %s refused after %s", dst, from.Name, d)
				}
			}
		}
	})

	t.Run("external policy local", func(t *testing.T) {
		rs := askN(t, c.client, "tcp", nodeIP.String()+":30083", 30)
		wantServers(t, rs, "b1", "b2") // b3 is on another node
		wantPeers(t, rs, clientIP)     // the client's address is kept
		// The ClusterIP still uses every endpoint.
		wantServers(t, askN(t, c.client, "tcp", "10.96.0.13:80", 30), "b1", "b2", "b3")
	})

	t.Run("external policy local without local endpoints", func(t *testing.T) {
		dst := nodeIP.String() + ":30084"
		_, err := ask(c.client, "tcp", dst, time.Second)
		if err == nil || errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s from outside: %v, want a timeout (dropped)", dst, err)
		}
		// Pods and the node itself are served by the cluster-wide endpoints; the pod
		// keeps its address.
		rs := askN(t, c.pods["b1"], "tcp", dst, 3)
		wantServers(t, rs, "b3")
		wantPeers(t, rs, podIPs["b1"])
		wantServers(t, askN(t, c.node, "tcp", dst, 3), "b3")
	})

	t.Run("pod masquerade", func(t *testing.T) {
		wantPeers(t, askN(t, c.pods["b2"], "tcp", clientIP.String()+":9000", 3), nodeIP)
	})

	t.Run("removed services lose their chains", func(t *testing.T) {
		removed := []*dataplane.ServicePort{st.Services[5], st.Services[6]} // sticky, web
		smaller := &dataplane.State{NodeName: st.NodeName, NodeAddrs: st.NodeAddrs, Services: st.Services[:5]}
		must(t, "sync", b.Sync(ctx, smaller))
		rules := saveRules(t, c.node)
		for _, sp := range removed {
			ch := chainsFor(sp.Name)
			names := []string{ch.svc, ch.ext, ch.xlb}
			for _, tg := range sp.ClusterTargets {
				names = append(names, sepChain(sp.Name, tg))
			}
			for _, n := range names {
				if countPrefix(rules, n) > 0 {
					t.Errorf("%s of removed %s is still there", n, sp.Name)
				}
			}
		}
		if ours := countPrefix(rules, " -A "+chainPrefix); ours != b.RuleCount() {
			t.Errorf("RuleCount %d, kernel holds %d", b.RuleCount(), ours)
		}
		wantServers(t, askN(t, c.client, "tcp", nodeIP.String()+":30083", 10), "b1", "b2")
	})

	t.Run("a new backend removes what an old one left", func(t *testing.T) {
		// An older version's jump, and the chains of services this State no longer has.
		cmd := newCommands(Config{Netns: c.node.Path()})
		must(t, "old jump", cmd.insert(ctx, "nat", "PREROUTING", `-m comment --comment "capstan v0" -j `+chainServices))
		fresh, err := New(c.config(t))
		must(t, "new", err)
		only := &dataplane.State{NodeName: st.NodeName, NodeAddrs: st.NodeAddrs, Services: st.Services[:1]}
		must(t, "sync", fresh.Sync(ctx, only))
		rules := saveRules(t, c.node)
		if n := countPrefix(rules, ":"+prefixSVC); n != 1 {
			t.Errorf("%d service chains, want dns's alone:\n%s", n, strings.Join(rules, "\n"))
		}
		if jumps := builtinJumps(rules); len(jumps) != len(wantedJumps()) {
			t.Errorf("jumps from built-in chains:\n%s\nwant %d", strings.Join(jumps, "\n"), len(wantedJumps()))
		}
		wantServers(t, askN(t, c.client, "udp", "10.96.0.53:53", 2), "b2")
	})

	t.Run("cleanup", func(t *testing.T) {
		cfg := c.config(t)
		must(t, "cleanup", Cleanup(ctx, cfg))
		if rules := saveRules(t, c.node); countPrefix(rules, chainPrefix) > 0 {
			t.Errorf("left after cleanup:\n%s", strings.Join(rules, "\n"))
		}
		must(t, "second cleanup", Cleanup(ctx, cfg))
	})
}

// builtinJumps are the saved rules of chains not ours that lead to ours.
func builtinJumps(rules []string) []string {
	var out []string
	for _, l := range rules {
		if !strings.Contains(l, " -A "+chainPrefix) && strings.Contains(l, "-j "+chainPrefix) {
			out = append(out, l)
		}
	}
	return out
}
