package ebpf

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/dataplane/policy"
)

var (
	polA     = netip.MustParseAddr("10.244.0.5")
	polB     = netip.MustParseAddr("10.244.0.7")
	polC     = netip.MustParseAddr("10.244.3.9")
	polAllow = types.NamespacedName{Namespace: "x", Name: "allow"}
	polOther = types.NamespacedName{Namespace: "x", Name: "other"}
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// verdict runs one packet through a pod program and returns its tc verdict.
func verdict(t *testing.T, d *Datapath, hook string, ifindex int, src, dst netip.AddrPort, proto Protocol, flags uint8) uint32 {
	t.Helper()
	progs := d.Programs()
	p := packet{src: src, dst: dst, proto: proto, tcpFlags: flags, payload: []byte("x")}
	prog := progs.PodEgress // delivery to the pod by the stack: its ingress policy
	if hook == "pod-in" {
		prog = progs.PodIngress // from the pod: its egress policy
	}
	ret, _ := runTC(t, prog, ifindex, p.bytes())
	return ret
}

func mustSyncPolicy(t *testing.T, d *Datapath, st *policy.State) {
	t.Helper()
	problems, err := d.SyncPolicy(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
}

func TestPolicyIngressRules(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	d := newTestDatapath(t, cfg)
	gateway := netip.MustParseAddr("10.244.0.1")
	if err := d.SetPolicyHosts([]netip.Addr{nodeIP, gateway}); err != nil {
		t.Fatal(err)
	}
	mustSyncPolicy(t, d, &policy.State{Endpoints: []policy.Endpoint{{
		Pod:  types.NamespacedName{Namespace: "x", Name: "b"},
		Addr: polB,
		Ingress: &policy.Rules{Policies: []types.NamespacedName{polAllow, polOther}, Entries: []policy.Entry{
			{Prefix: pfx("10.244.0.5/32"), Ports: []policy.PortRange{
				{Protocol: v1.ProtocolTCP, First: 80, Last: 80, Policy: polAllow},
				{Protocol: v1.ProtocolUDP, First: 53, Last: 60, Policy: polOther},
				{Protocol: v1.ProtocolSCTP, First: 80, Last: 80, Policy: polAllow},
			}},
			{Prefix: pfx("10.244.8.0/21"), Any: true, AnyPolicy: polOther},
			{Prefix: pfx("10.244.9.0/24")}, // an except hole
		}},
	}}})

	cases := []struct {
		name  string
		src   netip.AddrPort
		dport uint16
		proto Protocol
		want  uint32
	}{
		{"allowed peer and port", hp(polA, 40000), 80, TCP, tcActOK},
		{"allowed peer, other port", hp(polA, 40001), 81, TCP, tcActShot},
		{"udp range low end", hp(polA, 40002), 53, UDP, tcActOK},
		{"udp range high end", hp(polA, 40003), 60, UDP, tcActOK},
		{"udp past the range", hp(polA, 40004), 61, UDP, tcActShot},
		{"tcp port of the udp range", hp(polA, 40005), 55, TCP, tcActShot},
		{"sctp allowed", hp(polA, 40006), 80, SCTP, tcActOK},
		{"sctp other port", hp(polA, 40007), 81, SCTP, tcActShot},
		{"peer no rule admits", hp(polC, 40008), 80, TCP, tcActShot},
		{"the node, any port", hp(nodeIP, 40009), 81, TCP, tcActOK},
		{"the node by its pod gateway", hp(gateway, 40013), 81, TCP, tcActOK},
		{"ipBlock, any port", hp(netip.MustParseAddr("10.244.8.1"), 40010), 9999, UDP, tcActOK},
		{"ipBlock except", hp(netip.MustParseAddr("10.244.9.1"), 40011), 80, TCP, tcActShot},
		{"ipBlock past the except", hp(netip.MustParseAddr("10.244.10.1"), 40012), 80, TCP, tcActOK},
	}
	for _, c := range cases {
		if got := verdict(t, d, "pod-out", ifindex, c.src, hp(polB, c.dport), c.proto, tcpSYN); got != c.want {
			t.Errorf("%s: %s -> %s/%d: verdict %d, want %d", c.name, c.src, c.proto, c.dport, got, c.want)
		}
	}
	// The pod sends freely: it is not isolated for egress.
	if got := verdict(t, d, "pod-in", ifindex, hp(polB, 5000), hp(polC, 80), TCP, tcpSYN); got != tcActOK {
		t.Errorf("egress of a pod isolated for ingress only: verdict %d, want OK", got)
	}

	verdicts, byPolicy, err := d.PolicyCounters()
	if err != nil {
		t.Fatal(err)
	}
	if got := verdicts["ingress"].Denied; got != 6 {
		t.Errorf("ingress denied counter %d, want 6", got)
	}
	if got := verdicts["ingress"].AllowedFlows; got != 8 {
		t.Errorf("ingress allowed flows %d, want 8", got)
	}
	// Two UDP flows and two through the ipBlock; the node's flow counts for no policy.
	if got := byPolicy[polOther][0]; got != 4 {
		t.Errorf("flows admitted by %s: %d, want 4", polOther, got)
	}
	if got := byPolicy[polAllow][0]; got != 2 {
		t.Errorf("flows admitted by %s: %d, want 2", polAllow, got)
	}

	// Drop events.
	mon, err := OpenPolicyMonitor(d.cfg.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	if got := verdict(t, d, "pod-out", ifindex, hp(polC, 41000), hp(polB, 80), TCP, tcpSYN); got != tcActShot {
		t.Fatalf("verdict %d, want SHOT", got)
	}
	mon.SetDeadline(time.Now().Add(2 * time.Second))
	var ev PolicyDrop
	for {
		if ev, err = mon.Read(); err != nil {
			t.Fatalf("read drop event: %v", err)
		}
		if ev.Src.Port() == 41000 {
			break
		}
	}
	if ev.Src != hp(polC, 41000) || ev.Dst != hp(polB, 80) || !ev.Ingress || ev.Proto != TCP ||
		ev.Reason != "no rule admits the peer" {
		t.Errorf("drop event %+v", ev)
	}

	// What `capstan dp policy` shows.
	p, err := OpenPinned(d.cfg.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pp, err := p.PolicyFor(polB)
	if err != nil {
		t.Fatal(err)
	}
	if !pp.IngressIsolated || pp.EgressIsolated || len(pp.Ingress) != 3 || len(pp.Egress) != 0 {
		t.Fatalf("pod policy %+v", pp)
	}
	if r := pp.Ingress[0]; r.Peer != pfx("10.244.0.5/32") || len(r.Ports) != 3 ||
		r.Ports[1].String() != "UDP/53-60" || r.Ports[1].Policy != "x/other" {
		t.Errorf("first rule %+v", r)
	}
	if r := pp.Ingress[2]; r.Peer != pfx("10.244.9.0/24") || !r.Deny {
		t.Errorf("except rule %+v", r)
	}
}

func TestPolicyRepliesAndCuts(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	b := types.NamespacedName{Namespace: "x", Name: "b"}
	denyEgress := &policy.State{Endpoints: []policy.Endpoint{{Pod: b, Addr: polB,
		Egress: &policy.Rules{Policies: []types.NamespacedName{polAllow}}}}}
	mustSyncPolicy(t, d, denyEgress)

	// A connects to B, which may send nothing of its own: its answers still go out.
	if got := verdict(t, d, "pod-out", ifindex, hp(polA, 40000), hp(polB, 80), TCP, tcpSYN); got != tcActOK {
		t.Fatalf("A -> B: verdict %d, want OK", got)
	}
	if got := verdict(t, d, "pod-in", ifindex, hp(polB, 80), hp(polA, 40000), TCP, tcpSYN|tcpACK); got != tcActOK {
		t.Fatalf("B's reply: verdict %d, want OK", got)
	}
	if got := verdict(t, d, "pod-in", ifindex, hp(polB, 40001), hp(polA, 80), TCP, tcpSYN); got != tcActShot {
		t.Fatalf("B opening a connection: verdict %d, want SHOT", got)
	}
	if got := verdict(t, d, "pod-in", ifindex, hp(polB, 40001), hp(polA, 53), UDP, 0); got != tcActShot {
		t.Fatalf("B sending UDP: verdict %d, want SHOT", got)
	}

	// B admits A on port 80; a change that drops A cuts the established connection.
	allowA := &policy.State{Endpoints: []policy.Endpoint{{Pod: b, Addr: polB,
		Ingress: &policy.Rules{Policies: []types.NamespacedName{polAllow}, Entries: []policy.Entry{
			{Prefix: pfx("10.244.0.5/32"), Ports: []policy.PortRange{{Protocol: v1.ProtocolTCP, First: 80, Last: 80, Policy: polAllow}}},
		}}}}}
	mustSyncPolicy(t, d, allowA)
	if got := verdict(t, d, "pod-out", ifindex, hp(polA, 40000), hp(polB, 80), TCP, tcpACK); got != tcActOK {
		t.Fatalf("A -> B after allow: verdict %d, want OK", got)
	}
	writes := d.MapWrites()
	mustSyncPolicy(t, d, allowA)
	if d.MapWrites() != writes {
		t.Errorf("a sync with nothing new wrote %d map entries", d.MapWrites()-writes)
	}
	cut := &policy.State{Endpoints: []policy.Endpoint{{Pod: b, Addr: polB,
		Ingress: &policy.Rules{Policies: []types.NamespacedName{polAllow}, Entries: []policy.Entry{
			{Prefix: pfx("10.244.3.0/24"), Any: true, AnyPolicy: polAllow},
		}}}}}
	mustSyncPolicy(t, d, cut)
	if got := verdict(t, d, "pod-out", ifindex, hp(polA, 40000), hp(polB, 80), TCP, tcpACK); got != tcActShot {
		t.Fatalf("established A -> B after the policy dropped A: verdict %d, want SHOT", got)
	}
	if got := verdict(t, d, "pod-out", ifindex, hp(polC, 40000), hp(polB, 80), TCP, tcpSYN); got != tcActOK {
		t.Fatalf("C -> B: verdict %d, want OK", got)
	}

	// No policy: nothing is left in the maps, and B is open again.
	mustSyncPolicy(t, d, &policy.State{})
	for name, m := range map[string]*ebpf.Map{"eps": d.sock.PolicyEps, "rules": d.sock.PolicyRules, "ports": d.sock.PolicyPorts} {
		n, err := countKeys(m)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s map holds %d entries after every policy went", name, n)
		}
	}
	if got := verdict(t, d, "pod-out", ifindex, hp(polA, 40000), hp(polB, 80), TCP, tcpACK); got != tcActOK {
		t.Fatalf("A -> B without policy: verdict %d, want OK", got)
	}
}

func TestPolicyMapFull(t *testing.T) {
	enterTestNetns(t)
	cfg := testConfig()
	cfg.PolicyRules = 4
	d := newTestDatapath(t, cfg)
	var entries []policy.Entry
	for i := range 10 {
		entries = append(entries, policy.Entry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24),
			Any: true, AnyPolicy: polAllow})
	}
	b := types.NamespacedName{Namespace: "x", Name: "b"}
	problems, err := d.SyncPolicy(&policy.State{Endpoints: []policy.Endpoint{{Pod: b, Addr: polB,
		Ingress: &policy.Rules{Policies: []types.NamespacedName{polAllow}, Entries: entries}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 1 || problems[0].Pod != b || !errors.Is(problems[0].Err, ErrPolicyMapFull) ||
		len(problems[0].Policies) != 1 || problems[0].Policies[0] != polAllow {
		t.Fatalf("problems %+v, want one map-full problem for %s naming %s", problems, b, polAllow)
	}
}

func TestPortBlocks(t *testing.T) {
	for _, c := range []struct {
		first, last uint16
		want        int
	}{{80, 80, 1}, {0, 65535, 1}, {1, 65535, 16}, {8000, 8100, 4}, {53, 60, 4}} {
		blocks := portBlocks(c.first, c.last)
		if len(blocks) != c.want {
			t.Errorf("%d-%d: %d blocks, want %d", c.first, c.last, len(blocks), c.want)
		}
		// The blocks tile the range exactly.
		next := uint32(c.first)
		for _, b := range blocks {
			if uint32(b.start) != next {
				t.Fatalf("%d-%d: block at %d, want %d", c.first, c.last, b.start, next)
			}
			next += 1 << (16 - b.bits)
		}
		if next != uint32(c.last)+1 {
			t.Errorf("%d-%d: blocks end at %d", c.first, c.last, next-1)
		}
	}
}

func hp(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// TestPolicyOnlyMode checks the programs loaded for iptables and none modes: the stack does
// the DNAT, so service traffic is judged where it enters its pod or leaves the node.
func TestPolicyOnlyMode(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	cfg.PolicyOnly = true
	cfg.ServiceCIDR = pfx("10.96.0.0/16")
	cfg.ClusterCIDR = podCIDR
	d := newTestDatapath(t, cfg)
	a := types.NamespacedName{Namespace: "x", Name: "a"}
	mustSyncPolicy(t, d, &policy.State{Endpoints: []policy.Endpoint{{Pod: a, Addr: polA,
		Ingress: &policy.Rules{Policies: []types.NamespacedName{polAllow}},
		Egress: &policy.Rules{Policies: []types.NamespacedName{polAllow}, Entries: []policy.Entry{
			{Prefix: pfx("10.244.0.7/32"), Ports: []policy.PortRange{{Protocol: v1.ProtocolTCP, First: 8080, Last: 8080, Policy: polAllow}}},
		}}}}})
	progs := d.Programs()
	judge := func(name string, prog *ebpf.Program, src, dst netip.AddrPort, flags uint8, want uint32) {
		t.Helper()
		ret, _ := runTC(t, prog, ifindex, packet{src: src, dst: dst, proto: TCP, tcpFlags: flags}.bytes())
		if ret != want {
			t.Errorf("%s: %s -> %s: verdict %d, want %d", name, src, dst, ret, want)
		}
	}
	svc := hp(netip.MustParseAddr("10.96.0.10"), 80)
	// Leaving A: to a service, left for after the DNAT; elsewhere, judged at once.
	judge("A to a ClusterIP", progs.PodIngress, hp(polA, 40000), svc, tcpSYN, tcActOK)
	judge("A to C", progs.PodIngress, hp(polA, 40001), hp(polC, 8080), tcpSYN, tcActShot)
	// After the stack's DNAT: delivered to B on this node, or leaving for C's node.
	judge("A to B after DNAT", progs.PodEgress, hp(polA, 40000), hp(polB, 8080), tcpSYN, tcActOK)
	judge("A to B, other port", progs.PodEgress, hp(polA, 40002), hp(polB, 9090), tcpSYN, tcActShot)
	judge("A to C after DNAT", progs.NodeEgress, hp(polA, 40003), hp(polC, 8080), tcpSYN, tcActShot)
	judge("the node's own traffic", progs.NodeEgress, hp(nodeIP, 40004), hp(polC, 8080), tcpSYN, tcActOK)
	// The reply comes back translated to the service address; A admits nothing else.
	judge("reply from the ClusterIP", progs.PodEgress, svc, hp(polA, 40000), tcpSYN|tcpACK, tcActOK)
	judge("B opening to A", progs.PodEgress, hp(polB, 40005), hp(polA, 80), tcpSYN, tcActShot)
	// Nothing is translated or redirected: services are the stack's.
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: svc.Addr(), Port: 80, Proto: TCP}}, be1)
	ret, out := run(t, d, "pod-in", ifindex, packet{src: hp(polB, 40006), dst: svc, proto: TCP, tcpFlags: tcpSYN})
	if ret != tcActOK || out.dst != svc {
		t.Errorf("policy-only pod program translated a service packet: verdict %d, destination %s", ret, out.dst)
	}
}
