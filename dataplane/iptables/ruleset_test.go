package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/dataplane"
)

func spName(name, port string, proto v1.Protocol) dataplane.ServicePortName {
	return dataplane.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name},
		Port: port, Protocol: proto}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// targets makes usable targets from "ip:port" strings; a leading "~" makes one terminating.
func targets(ss ...string) []dataplane.Target {
	var out []dataplane.Target
	for _, s := range ss {
		usable := !strings.HasPrefix(s, "~")
		ap := netip.MustParseAddrPort(strings.TrimPrefix(s, "~"))
		out = append(out, dataplane.Target{Addr: ap.Addr(), Port: ap.Port(), Usable: usable})
	}
	return out
}

// sampleState has one service port of each kind the rules distinguish.
func sampleState() *dataplane.State {
	three := targets("10.244.1.1:8080", "10.244.1.2:8080", "10.244.2.3:8080", "~10.244.1.9:8080")
	return &dataplane.State{
		NodeName:  "node-a",
		NodeAddrs: addrs("192.168.50.1", "fd00::1"),
		Services: []*dataplane.ServicePort{
			{Name: spName("empty", "dns", v1.ProtocolUDP), ClusterIPs: addrs("10.96.0.53"), Port: 53,
				Protocol: v1.ProtocolUDP, ExternalIPs: addrs("192.0.2.5"), NodePort: 30053},
			{Name: spName("local", "http", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.13"), Port: 80,
				Protocol: v1.ProtocolTCP, NodePort: 30083, ExternalPolicyLocal: true,
				ClusterTargets: three, ExternalTargets: targets("10.244.1.1:8080")},
			{Name: spName("local-none", "http", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.14"), Port: 80,
				Protocol: v1.ProtocolTCP, NodePort: 30084, ExternalPolicyLocal: true,
				LoadBalancerIPs: addrs("198.51.100.7"), ClusterTargets: targets("10.244.2.3:8080")},
			{Name: spName("sticky", "", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.11"), Port: 80,
				Protocol: v1.ProtocolTCP, AffinityTimeout: 3 * time.Hour,
				ClusterTargets: targets("10.244.1.1:8080", "10.244.1.2:8080")},
			{Name: spName("v6only", "http", v1.ProtocolTCP), ClusterIPs: addrs("fd00:96::1"), Port: 80,
				Protocol: v1.ProtocolTCP, ClusterTargets: targets("[fd00:244::1]:80")},
			{Name: spName("web", "http", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.10", "fd00:96::10"), Port: 80,
				Protocol: v1.ProtocolTCP, NodePort: 30080, ExternalIPs: addrs("192.0.2.10"),
				ClusterTargets: three, ExternalTargets: three},
		},
	}
}

// parsed is a ruleset split by table, for assertions.
type parsed map[string][]string

func parseRuleset(t *testing.T, text []byte) parsed {
	t.Helper()
	p := parsed{}
	table := ""
	for _, l := range strings.Split(strings.TrimSuffix(string(text), "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case l == "COMMIT":
			table = ""
		case table == "":
			t.Fatalf("line outside a table: %q", l)
		default:
			p[table] = append(p[table], l)
		}
	}
	return p
}

// chain returns the rules of one chain, without "-A chain ".
func (p parsed) chain(table, chain string) []string {
	var out []string
	for _, l := range p[table] {
		if rest, ok := strings.CutPrefix(l, "-A "+chain+" "); ok {
			out = append(out, rest)
		}
	}
	return out
}

func (p parsed) has(table, line string) bool { return slices.Contains(p[table], line) }

func (p parsed) declared(table, chain string) bool { return p.has(table, ":"+chain+" - [0:0]") }

func wantRules(t *testing.T, p parsed, table, chain string, want ...string) {
	t.Helper()
	got := p.chain(table, chain)
	if !slices.Equal(got, want) {
		t.Errorf("%s %s:\n got %s\nwant %s", table, chain, strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

func sep(name dataplane.ServicePortName, ap string) string {
	a := netip.MustParseAddrPort(ap)
	return sepChain(name, dataplane.Target{Addr: a.Addr(), Port: a.Port()})
}

func buildSample(t *testing.T, in buildInput) (*ruleset, parsed) {
	t.Helper()
	if in.st == nil {
		in.st = sampleState()
	}
	if !in.clusterCIDR.IsValid() {
		in.clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	}
	rs := build(in)
	return rs, parseRuleset(t, rs.text)
}

func TestChainNames(t *testing.T) {
	for _, name := range []dataplane.ServicePortName{spName("a-very-long-service-name-that-goes-on", "a-long-port-name", v1.ProtocolSCTP)} {
		ch := chainsFor(name)
		for _, c := range []string{ch.svc, ch.xlb, ch.ext, sepChain(name, targets("10.0.0.1:1")[0])} {
			if len(c) > maxChainName {
				t.Errorf("%s is %d characters, iptables takes %d", c, len(c), maxChainName)
			}
		}
	}
	tcp, udp := chainsFor(spName("web", "http", v1.ProtocolTCP)), chainsFor(spName("web", "http", v1.ProtocolUDP))
	if tcp.svc == udp.svc {
		t.Errorf("TCP and UDP ports of one service share chain %s", tcp.svc)
	}
	if a, b := sep(spName("a", "", v1.ProtocolTCP), "10.0.0.1:80"), sep(spName("b", "", v1.ProtocolTCP), "10.0.0.1:80"); a == b {
		t.Errorf("two services share endpoint chain %s", a)
	}
}

func TestClusterIPBalancing(t *testing.T) {
	_, p := buildSample(t, buildInput{})
	web := spName("web", "http", v1.ProtocolTCP)
	ch := chainsFor(web)
	s1, s2, s3 := sep(web, "10.244.1.1:8080"), sep(web, "10.244.1.2:8080"), sep(web, "10.244.2.3:8080")

	if !p.has("nat", `-A CAPSTAN-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment "default/web:http/TCP cluster IP" -j `+ch.svc) {
		t.Errorf("no ClusterIP rule for web:\n%s", strings.Join(p.chain("nat", chainServices), "\n"))
	}
	// 1/3, then 1/2 of the rest, then whatever is left: each endpoint a third. The
	// terminating endpoint takes no new connection and so has no chain.
	wantRules(t, p, "nat", ch.svc,
		"! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j CAPSTAN-MARK-MASQ",
		"-m statistic --mode random --probability 0.3333333333 -j "+s1,
		"-m statistic --mode random --probability 0.5000000000 -j "+s2,
		"-j "+s3)
	wantRules(t, p, "nat", s1,
		"-s 10.244.1.1/32 -j CAPSTAN-MARK-MASQ",
		"-p tcp -j DNAT --to-destination 10.244.1.1:8080")
	if s9 := sep(web, "10.244.1.9:8080"); p.declared("nat", s9) {
		t.Errorf("terminating endpoint has chain %s", s9)
	}
	// Cluster policy: the external frontends share the ClusterIP's choice, masqueraded.
	wantRules(t, p, "nat", ch.ext, "-j CAPSTAN-MARK-MASQ", "-j "+ch.svc)
	if p.declared("nat", ch.xlb) {
		t.Errorf("cluster-policy service has an XLB chain")
	}
	if !p.has("nat", `-A CAPSTAN-SERVICES -d 192.0.2.10/32 -p tcp -m tcp --dport 80 -m comment --comment "default/web:http/TCP external IP" -j `+ch.ext) {
		t.Errorf("no external IP rule for web")
	}
	if !p.has("nat", `-A CAPSTAN-NODEPORTS -p tcp -m tcp --dport 30080 -m comment --comment "default/web:http/TCP node port" -j `+ch.ext) {
		t.Errorf("no NodePort rule for web:\n%s", strings.Join(p.chain("nat", chainNodePorts), "\n"))
	}
	if strings.Contains(strings.Join(p["nat"], "\n"), "fd00") {
		t.Errorf("IPv6 address in the IPv4 ruleset")
	}
}

func TestSessionAffinity(t *testing.T) {
	_, p := buildSample(t, buildInput{})
	sticky := spName("sticky", "", v1.ProtocolTCP)
	s1, s2 := sep(sticky, "10.244.1.1:8080"), sep(sticky, "10.244.1.2:8080")
	wantRules(t, p, "nat", chainsFor(sticky).svc,
		"! -s 10.244.0.0/16 -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j CAPSTAN-MARK-MASQ",
		"-m recent --name "+s1+" --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j "+s1,
		"-m recent --name "+s2+" --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j "+s2,
		"-m statistic --mode random --probability 0.5000000000 -j "+s1,
		"-j "+s2)
	wantRules(t, p, "nat", s2,
		"-s 10.244.1.2/32 -j CAPSTAN-MARK-MASQ",
		"-p tcp -m recent --name "+s2+" --set --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.2:8080")
}

func TestNoEndpoints(t *testing.T) {
	_, p := buildSample(t, buildInput{})
	empty := spName("empty", "dns", v1.ProtocolUDP)
	ch := chainsFor(empty)
	for _, c := range []string{ch.svc, ch.ext, ch.xlb} {
		if p.declared("nat", c) {
			t.Errorf("service without endpoints has chain %s", c)
		}
	}
	reject := "-j REJECT --reject-with icmp-port-unreachable"
	want := []string{
		`-A CAPSTAN-SERVICES -d 10.96.0.53/32 -p udp -m udp --dport 53 -m comment --comment "default/empty:dns/UDP has no endpoints" ` + reject,
		`-A CAPSTAN-EXTERNAL-SERVICES -d 192.0.2.5/32 -p udp -m udp --dport 53 -m comment --comment "default/empty:dns/UDP has no endpoints" ` + reject,
		`-A CAPSTAN-NODEPORTS -p udp -m udp --dport 30053 -m comment --comment "default/empty:dns/UDP has no endpoints" ` + reject,
	}
	for _, w := range want {
		if !p.has("filter", w) {
			t.Errorf("filter lacks %s", w)
		}
	}
	// NodePorts are matched on the node's IPv4 addresses, after every other frontend.
	svcs := p.chain("filter", chainExternalServices)
	if len(svcs) == 0 || svcs[len(svcs)-1] != "-d 192.168.50.1/32 -j CAPSTAN-NODEPORTS" {
		t.Errorf("filter %s does not end with the NodePort jump: %q", chainExternalServices, svcs)
	}
	nat := p.chain("nat", chainServices)
	if len(nat) == 0 || nat[len(nat)-1] != "-d 192.168.50.1/32 -j CAPSTAN-NODEPORTS" {
		t.Errorf("nat %s does not end with the NodePort jump: %q", chainServices, nat)
	}
}

func TestExternalPolicyLocal(t *testing.T) {
	_, p := buildSample(t, buildInput{})
	local := spName("local", "http", v1.ProtocolTCP)
	ch := chainsFor(local)
	// Outside clients reach the local endpoint only, unmasqueraded; pods and the node
	// itself use all endpoints, the node masqueraded.
	wantRules(t, p, "nat", ch.ext,
		"-s 10.244.0.0/16 -j "+ch.svc,
		"-m addrtype --src-type LOCAL -j CAPSTAN-MARK-MASQ",
		"-m addrtype --src-type LOCAL -j "+ch.svc,
		"-j "+ch.xlb)
	wantRules(t, p, "nat", ch.xlb, "-j "+sep(local, "10.244.1.1:8080"))
	if got := len(p.chain("nat", ch.svc)); got != 4 {
		t.Errorf("%s has %d rules, want masquerade + 3 endpoints", ch.svc, got)
	}

	// No local endpoint: external clients fall through EXT and are dropped, not rejected.
	none := spName("local-none", "http", v1.ProtocolTCP)
	nch := chainsFor(none)
	wantRules(t, p, "nat", nch.ext,
		"-s 10.244.0.0/16 -j "+nch.svc,
		"-m addrtype --src-type LOCAL -j CAPSTAN-MARK-MASQ",
		"-m addrtype --src-type LOCAL -j "+nch.svc)
	if p.declared("nat", nch.xlb) {
		t.Errorf("service without local endpoints has an XLB chain")
	}
	for _, w := range []string{
		`-A CAPSTAN-NODEPORTS -p tcp -m tcp --dport 30084 -m comment --comment "default/local-none:http/TCP has no local endpoints" -j DROP`,
		`-A CAPSTAN-EXTERNAL-SERVICES -d 198.51.100.7/32 -p tcp -m tcp --dport 80 -m comment --comment "default/local-none:http/TCP has no local endpoints" -j DROP`,
	} {
		if !p.has("filter", w) {
			t.Errorf("filter lacks %s", w)
		}
	}
	if !p.has("nat", `-A CAPSTAN-SERVICES -d 198.51.100.7/32 -p tcp -m tcp --dport 80 -m comment --comment "default/local-none:http/TCP load-balancer IP" -j `+nch.ext) {
		t.Errorf("no nat rule for the load-balancer IP of local-none")
	}
}

func TestInternalPolicyLocalWithoutLocalEndpoints(t *testing.T) {
	st := &dataplane.State{Services: []*dataplane.ServicePort{{
		Name: spName("itp", "", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.20"), Port: 80,
		Protocol: v1.ProtocolTCP, InternalPolicyLocal: true, NodePort: 30020,
		ExternalTargets: targets("10.244.2.3:8080"),
	}}}
	_, p := buildSample(t, buildInput{st: st})
	// Endpoints exist elsewhere: the ClusterIP drops rather than refuses, the NodePort works.
	if !p.has("filter", `-A CAPSTAN-SERVICES -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -m comment --comment "default/itp:/TCP has no local endpoints" -j DROP`) {
		t.Errorf("no DROP for the ClusterIP:\n%s", strings.Join(p["filter"], "\n"))
	}
	ch := chainsFor(st.Services[0].Name)
	wantRules(t, p, "nat", ch.ext, "-j CAPSTAN-MARK-MASQ", "-j "+ch.xlb)
	// Without node addresses NodePorts answer on any local address but loopback.
	if !p.has("nat", "-A CAPSTAN-SERVICES ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j CAPSTAN-NODEPORTS") {
		t.Errorf("no NodePort jump on local addresses:\n%s", strings.Join(p.chain("nat", chainServices), "\n"))
	}
}

func TestMasqueradeRules(t *testing.T) {
	mark := "-m mark ! --mark 0x10000/0x10000"
	_, p := buildSample(t, buildInput{})
	wantRules(t, p, "nat", chainPostrouting,
		mark+" -j RETURN", "-j MARK --xor-mark 0x10000", "-j MASQUERADE --random-fully")
	wantRules(t, p, "nat", chainMarkMasq, "-j MARK --or-mark 0x10000")
	wantRules(t, p, "filter", chainForward,
		"-m mark --mark 0x10000/0x10000 -j ACCEPT",
		"-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
	if p.declared("nat", chainMasqPods) {
		t.Errorf("pod masquerading without Masquerade")
	}

	_, p = buildSample(t, buildInput{masquerade: true, serviceCIDR: netip.MustParsePrefix("10.96.0.0/12")})
	wantRules(t, p, "nat", chainPostrouting,
		mark+" -j "+chainMasqPods, mark+" -j RETURN", "-j MARK --xor-mark 0x10000", "-j MASQUERADE --random-fully")
	wantRules(t, p, "nat", chainMasqPods,
		"! -s 10.244.0.0/16 -j RETURN", "-d 10.244.0.0/16 -j RETURN", "-d 10.96.0.0/12 -j RETURN",
		"-j MASQUERADE --random-fully")
}

func TestStaleChains(t *testing.T) {
	old := prefixSVC + "OLDOLDOLDOLDOLDO"
	staleJump := `PREROUTING -m comment --comment "capstan v0" -j CAPSTAN-SERVICES`
	_, p := buildSample(t, buildInput{
		existing:   map[string]map[string]bool{"nat": {old: true, chainServices: true}},
		staleJumps: map[string][]string{"nat": {staleJump}},
	})
	// Declared (flushed), then deleted after every rule; wanted chains are not deleted.
	nat := p["nat"]
	decl, del := slices.Index(nat, ":"+old+" - [0:0]"), slices.Index(nat, "-X "+old)
	djump := slices.Index(nat, "-D "+staleJump)
	if decl < 0 || del < 0 || djump < 0 || decl > del || del != len(nat)-1 {
		t.Errorf("stale chain not flushed then deleted last (decl %d, jump %d, delete %d of %d)", decl, djump, del, len(nat))
	}
	if slices.Contains(nat, "-X "+chainServices) {
		t.Errorf("wanted chain deleted")
	}
	for _, l := range p["filter"] {
		if strings.HasPrefix(l, "-X") || strings.HasPrefix(l, "-D") {
			t.Errorf("filter deletes %q", l)
		}
	}
}

func TestRulesetDeterministic(t *testing.T) {
	a, _ := buildSample(t, buildInput{})
	b, _ := buildSample(t, buildInput{})
	if string(a.text) != string(b.text) {
		t.Errorf("two builds of one State differ")
	}
	if a.rules != strings.Count(string(a.text), "\n-A ") {
		t.Errorf("rules = %d, input has %d", a.rules, strings.Count(string(a.text), "\n-A "))
	}
	if len(a.skipped) != 1 || !strings.Contains(a.skipped[0], "v6only") {
		t.Errorf("skipped %q, want the IPv6-only service", a.skipped)
	}
}

func TestSupported(t *testing.T) {
	for algo, want := range map[string]bool{
		dataplane.AlgorithmRandom: true, dataplane.AlgorithmRoundRobin: false,
		dataplane.AlgorithmLeastConn: false, dataplane.AlgorithmSourceHash: false,
	} {
		if got := Supported(algo); got != want {
			t.Errorf("Supported(%q) = %v", algo, got)
		}
	}
}
