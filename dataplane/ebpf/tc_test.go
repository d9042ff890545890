package ebpf

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

var (
	vip      = netip.MustParseAddr("10.96.0.10")
	clientIP = netip.MustParseAddr("10.244.0.5")
	be1      = Backend{Addr: netip.MustParseAddr("10.244.1.2"), Port: 8080}
	be2      = Backend{Addr: netip.MustParseAddr("10.244.2.3"), Port: 8080}
	be3      = Backend{Addr: netip.MustParseAddr("10.244.3.4"), Port: 8080}
)

func backendAddrs(bs ...Backend) map[netip.AddrPort]bool {
	m := make(map[netip.AddrPort]bool)
	for _, b := range bs {
		m[netip.AddrPortFrom(b.Addr, b.Port)] = true
	}
	return m
}

func mustUpsert(t testing.TB, d *Datapath, s Service, bs ...Backend) {
	t.Helper()
	if err := d.UpsertService(s, bs); err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, d *Datapath, hook string, ifindex int, p packet) (uint32, parsed) {
	t.Helper()
	progs := d.Programs()
	var ret uint32
	var out []byte
	switch hook {
	case "pod-in":
		ret, out = runTC(t, progs.PodIngress, ifindex, p.bytes())
	case "pod-out":
		ret, out = runTC(t, progs.PodEgress, ifindex, p.bytes())
	case "node-in":
		ret, out = runTC(t, progs.NodeIngress, ifindex, p.bytes())
	case "node-out":
		ret, out = runTC(t, progs.NodeEgress, ifindex, p.bytes())
	default:
		t.Fatalf("unknown hook %s", hook)
	}
	got, err := parsePacket(out)
	if err != nil {
		t.Fatalf("%s: output packet: %v", hook, err)
	}
	return ret, got
}

func TestClusterIPDNATAndReverseNAT(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())

	// No subtests: BPF_PROG_RUN must stay on this goroutine's thread, in the test netns.
	for _, proto := range []Protocol{TCP, UDP} {
		{
			svc := Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: proto}}
			mustUpsert(t, d, svc, be1, be2)

			req := packet{src: netip.AddrPortFrom(clientIP, 40000), dst: netip.AddrPortFrom(vip, 80),
				proto: proto, tcpFlags: tcpSYN, seq: 1000, payload: []byte("hello")}
			ret, out := run(t, d, "pod-in", ifindex, req)
			if ret != tcActOK {
				t.Fatalf("pod ingress verdict %d, want TC_ACT_OK", ret)
			}
			if !backendAddrs(be1, be2)[out.dst] {
				t.Fatalf("destination %s is not a backend", out.dst)
			}
			if out.src != req.src || !bytes.Equal(out.payload, req.payload) {
				t.Fatalf("source or payload changed: %s %q", out.src, out.payload)
			}
			backend := out.dst

			// The reply reaches the client pod through its veth: translated back to the VIP.
			reply := packet{src: backend, dst: req.src, proto: proto, tcpFlags: tcpSYN | tcpACK, payload: []byte("hi")}
			ret, out = run(t, d, "pod-out", ifindex, reply)
			if ret != tcActOK {
				t.Fatalf("pod egress verdict %d", ret)
			}
			if out.src != req.dst || out.dst != req.src {
				t.Fatalf("reply %s -> %s, want %s -> %s", out.src, out.dst, req.dst, req.src)
			}

			// The same reply leaving a local backend pod is translated at that pod's ingress
			// and forwarded by FIB lookup.
			ret, out = run(t, d, "pod-in", ifindex, reply)
			if ret != tcActRedirect || out.src != req.dst {
				t.Fatalf("backend-side reply: verdict %d, source %s", ret, out.src)
			}

			// Every later packet of the flow sticks to the backend.
			for i := range 20 {
				req.tcpFlags = tcpACK
				_, out = run(t, d, "pod-in", ifindex, req)
				if out.dst != backend {
					t.Fatalf("packet %d went to %s, flow started on %s", i, out.dst, backend)
				}
			}
		}
	}
}

// A TCP and a UDP service on the same address and port are separate services.
func TestSamePortTCPAndUDP(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	dnsTCP := Backend{Addr: netip.MustParseAddr("10.244.1.53"), Port: 5353}
	dnsUDP := Backend{Addr: netip.MustParseAddr("10.244.2.53"), Port: 5354}
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 53, Proto: TCP}}, dnsTCP)
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 53, Proto: UDP}}, dnsUDP)

	for proto, want := range map[Protocol]Backend{TCP: dnsTCP, UDP: dnsUDP} {
		_, out := run(t, d, "pod-in", ifindex, packet{src: netip.AddrPortFrom(clientIP, 5000),
			dst: netip.AddrPortFrom(vip, 53), proto: proto, tcpFlags: tcpSYN})
		if out.dst != netip.AddrPortFrom(want.Addr, want.Port) {
			t.Errorf("%s went to %s, want %s", proto, out.dst, want)
		}
	}
}

func TestNodePortSNAT(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	if err := d.SetNodeAddrs([]netip.Addr{nodeIP}); err != nil {
		t.Fatal(err)
	}
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Port: 30080, Proto: TCP}}, be1)

	client := netip.AddrPortFrom(extClient, 5555)
	front := netip.AddrPortFrom(nodeIP, 30080)
	ret, out := run(t, d, "node-in", ifindex, packet{srcMAC: peerMAC, dstMAC: nodeDevMAC,
		src: client, dst: front, proto: TCP, tcpFlags: tcpSYN, seq: 7})
	// The pod route's neighbour is unresolved: bpf_redirect_neigh.
	if ret != tcActRedirect {
		t.Fatalf("verdict %d, want redirect", ret)
	}
	if out.dst != netip.AddrPortFrom(be1.Addr, be1.Port) {
		t.Fatalf("destination %s, want %s", out.dst, be1)
	}
	if out.ttl != 63 {
		t.Fatalf("TTL %d, want 63: a redirected packet is forwarded", out.ttl)
	}
	if out.src.Addr() != nodeIP || out.src.Port() < 61000 {
		t.Fatalf("source %s, want %s with a port from the SNAT range", out.src, nodeIP)
	}
	snat := out.src

	// The backend answers the node; the reply goes back to the client from the NodePort.
	ret, out = run(t, d, "node-in", ifindex, packet{src: out.dst, dst: snat, proto: TCP,
		tcpFlags: tcpSYN | tcpACK})
	if ret != tcActRedirect {
		t.Fatalf("reply verdict %d, want redirect", ret)
	}
	if out.src != front || out.dst != client {
		t.Fatalf("reply %s -> %s, want %s -> %s", out.src, out.dst, front, client)
	}
	// The client's neighbour is known: plain bpf_redirect with rewritten MACs.
	if out.dstMAC != peerMAC || out.srcMAC != nodeDevMAC {
		t.Fatalf("reply MACs %x -> %x", out.srcMAC, out.dstMAC)
	}

	// A second client on the same source port gets its own SNAT port.
	other := netip.AddrPortFrom(netip.MustParseAddr("192.168.50.98"), 5555)
	_, out2 := run(t, d, "node-in", ifindex, packet{src: other, dst: front, proto: TCP, tcpFlags: tcpSYN})
	if out2.src == snat {
		t.Fatalf("two clients share SNAT source %s", snat)
	}
}

func TestNodePortExternalLocal(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	if err := d.SetNodeAddrs([]netip.Addr{nodeIP}); err != nil {
		t.Fatal(err)
	}
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Port: 30081, Proto: UDP}, ExternalLocal: true}, be1)

	client := netip.AddrPortFrom(extClient, 6000)
	front := netip.AddrPortFrom(nodeIP, 30081)
	_, out := run(t, d, "node-in", ifindex, packet{src: client, dst: front, proto: UDP})
	if out.src != client || out.dst != netip.AddrPortFrom(be1.Addr, be1.Port) {
		t.Fatalf("got %s -> %s, want the client kept and the local backend", out.src, out.dst)
	}
	// The local backend's reply is translated at its veth.
	ret, out := run(t, d, "pod-in", ifindex, packet{src: out.dst, dst: client, proto: UDP})
	if ret != tcActRedirect || out.src != front || out.dst != client {
		t.Fatalf("reply: verdict %d, %s -> %s", ret, out.src, out.dst)
	}
	// A NodePort does not answer on addresses that are not the node's.
	_, out = run(t, d, "node-in", ifindex, packet{src: client,
		dst: netip.AddrPortFrom(netip.MustParseAddr("192.168.50.11"), 30081), proto: UDP})
	if out.dst.Addr() != netip.MustParseAddr("192.168.50.11") {
		t.Fatalf("non-node address translated to %s", out.dst)
	}
}

// A Local NodePort whose only endpoint is on another node: traffic from outside finds no
// local endpoint, a pod of this node reaches the remote one through the internal entry.
func TestNodePortExternalLocalInternalEntry(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	if err := d.SetNodeAddrs([]netip.Addr{nodeIP}); err != nil {
		t.Fatal(err)
	}
	key := ServiceKey{Port: 30082, Proto: UDP}
	mustUpsert(t, d, Service{ServiceKey: key, ExternalLocal: true})
	key.Internal = true
	mustUpsert(t, d, Service{ServiceKey: key}, be2)

	front := netip.AddrPortFrom(nodeIP, 30082)
	ret, out := run(t, d, "node-in", ifindex, packet{src: netip.AddrPortFrom(extClient, 6000), dst: front, proto: UDP})
	if out.dst == netip.AddrPortFrom(be2.Addr, be2.Port) {
		t.Fatalf("outside client sent to the remote endpoint (verdict %d)", ret)
	}
	_, out = run(t, d, "pod-in", ifindex, packet{src: netip.AddrPortFrom(clientIP, 6001), dst: front, proto: UDP})
	if out.dst != netip.AddrPortFrom(be2.Addr, be2.Port) || out.src.Addr() != clientIP {
		t.Fatalf("pod's datagram went %s -> %s, want from the pod to the remote endpoint", out.src, out.dst)
	}
}

// A NodePort whose endpoint is a hostNetwork pod of this node: the packet goes up this node's
// stack unSNATed (from our own address it would be a martian), and the reply leaving the node
// device is translated back.
func TestNodePortToThisNodesAddress(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	if err := d.SetNodeAddrs([]netip.Addr{nodeIP}); err != nil {
		t.Fatal(err)
	}
	host := Backend{Addr: nodeIP, Port: 9080}
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Port: 30083, Proto: TCP}}, host)

	client := netip.AddrPortFrom(extClient, 6002)
	front := netip.AddrPortFrom(nodeIP, 30083)
	ret, out := run(t, d, "node-in", ifindex, packet{src: client, dst: front, proto: TCP, tcpFlags: tcpSYN})
	if ret != tcActOK || out.src != client || out.dst != netip.AddrPortFrom(host.Addr, host.Port) {
		t.Fatalf("verdict %d, %s -> %s; want to the stack from the client to %s:%d", ret, out.src, out.dst, host.Addr, host.Port)
	}
	_, out = run(t, d, "node-out", ifindex, packet{src: out.dst, dst: client, proto: TCP, tcpFlags: tcpSYN | tcpACK})
	if out.src != front || out.dst != client {
		t.Fatalf("reply %s -> %s, want %s -> %s", out.src, out.dst, front, client)
	}
}

func TestNoEndpointsReject(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}})
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 53, Proto: UDP}})

	client := netip.AddrPortFrom(clientIP, 40001)
	syn := packet{srcMAC: peerMAC, dstMAC: nodeDevMAC, src: client, dst: netip.AddrPortFrom(vip, 80),
		proto: TCP, tcpFlags: tcpSYN, seq: 4242}
	ret, rst := run(t, d, "pod-in", ifindex, syn)
	if ret != tcActRedirect {
		t.Fatalf("SYN verdict %d, want redirect of a RST", ret)
	}
	if rst.src != syn.dst || rst.dst != syn.src || rst.tcpFlags != tcpRST|tcpACK || rst.ack != 4243 {
		t.Fatalf("got %s -> %s flags %#x ack %d, want RST|ACK to the client acking 4243",
			rst.src, rst.dst, rst.tcpFlags, rst.ack)
	}
	if rst.dstMAC != peerMAC || rst.srcMAC != nodeDevMAC {
		t.Fatal("RST MACs not swapped")
	}
	// A reset is never answered.
	if ret, _ := runTC(t, d.Programs().PodIngress, ifindex, packet{src: client,
		dst: syn.dst, proto: TCP, tcpFlags: tcpRST}.bytes()); ret != tcActShot {
		t.Fatalf("RST verdict %d, want drop", ret)
	}

	dgram := packet{src: client, dst: netip.AddrPortFrom(vip, 53), proto: UDP, payload: []byte("query")}
	ret, icmp := run(t, d, "pod-in", ifindex, dgram)
	if ret != tcActRedirect {
		t.Fatalf("UDP verdict %d, want redirect of an ICMP error", ret)
	}
	if icmp.ipProto != 1 || icmp.icmpType != 3 || icmp.icmpCode != 3 {
		t.Fatalf("got proto %d type %d code %d, want ICMP port unreachable", icmp.ipProto, icmp.icmpType, icmp.icmpCode)
	}
	if icmp.src.Addr() != vip || icmp.dst.Addr() != clientIP {
		t.Fatalf("ICMP %s -> %s", icmp.src, icmp.dst)
	}
	orig := dgram.bytes()[14 : 14+28]
	if !bytes.Equal(icmp.quoted, orig) {
		t.Fatalf("ICMP quotes %x, want %x", icmp.quoted, orig)
	}
}

func ctEntries(t testing.TB, d *Datapath) int {
	t.Helper()
	var (
		k sockCtKey
		v sockCtEntry
		n int
	)
	it := d.sock.Ct4.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func conns(t testing.TB, d *Datapath, b Backend, proto Protocol) uint32 {
	t.Helper()
	n, ok, err := d.BackendConns(b.Addr, b.Port, proto)
	if err != nil || !ok {
		t.Fatalf("connection count of %s: ok=%v err=%v", b, ok, err)
	}
	return n
}

func TestConntrackExpiry(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	cfg.UDPTimeout = 300 * time.Millisecond
	cfg.TCPCloseTimeout = 200 * time.Millisecond
	d := newTestDatapath(t, cfg)
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 53, Proto: UDP}, Algorithm: LeastConn}, be1)
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}, Algorithm: LeastConn}, be2)

	q := packet{src: netip.AddrPortFrom(clientIP, 7000), dst: netip.AddrPortFrom(vip, 53), proto: UDP}
	run(t, d, "pod-in", ifindex, q)
	if n := ctEntries(t, d); n != 2 {
		t.Fatalf("%d conntrack entries after one flow, want forward + reply", n)
	}
	if n := conns(t, d, be1, UDP); n != 1 {
		t.Fatalf("least-conn count %d, want 1", n)
	}
	// Traffic keeps the entry alive past its idle timeout.
	for range 4 {
		time.Sleep(100 * time.Millisecond)
		run(t, d, "pod-in", ifindex, q)
	}
	if n := ctEntries(t, d); n != 2 {
		t.Fatalf("active flow expired (%d entries)", n)
	}
	// Idle, it expires by its BPF timer: entries gone and the count given back, with no
	// packet and no userspace sweep.
	waitFor(t, 2*time.Second, "conntrack expiry", func() bool { return ctEntries(t, d) == 0 })
	if n := conns(t, d, be1, UDP); n != 0 {
		t.Fatalf("least-conn count %d after expiry, want 0", n)
	}

	// TCP: RST gives the count back at once, the entry lingers for the close timeout.
	syn := packet{src: netip.AddrPortFrom(clientIP, 7001), dst: netip.AddrPortFrom(vip, 80), proto: TCP, tcpFlags: tcpSYN}
	run(t, d, "pod-in", ifindex, syn)
	if n := conns(t, d, be2, TCP); n != 1 {
		t.Fatalf("count %d after SYN, want 1", n)
	}
	rst := syn
	rst.tcpFlags = tcpRST | tcpACK
	run(t, d, "pod-in", ifindex, rst)
	if n := conns(t, d, be2, TCP); n != 0 {
		t.Fatalf("count %d after RST, want 0", n)
	}
	waitFor(t, 2*time.Second, "closed flow expiry", func() bool { return ctEntries(t, d) == 0 })
	if n := conns(t, d, be2, TCP); n != 0 {
		t.Fatalf("count %d after expiry of a closed flow, want 0", n)
	}

	// FIN from the backend side closes too.
	run(t, d, "pod-in", ifindex, syn)
	fin := packet{src: netip.AddrPortFrom(be2.Addr, be2.Port), dst: syn.src, proto: TCP, tcpFlags: tcpFIN | tcpACK}
	run(t, d, "pod-out", ifindex, fin)
	if n := conns(t, d, be2, TCP); n != 0 {
		t.Fatalf("count %d after FIN, want 0", n)
	}
}

func TestTerminatingBackendKeepsFlows(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	svc := Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}}
	mustUpsert(t, d, svc, be1)

	old := packet{src: netip.AddrPortFrom(clientIP, 9000), dst: netip.AddrPortFrom(vip, 80), proto: TCP, tcpFlags: tcpSYN}
	_, out := run(t, d, "pod-in", ifindex, old)
	if out.dst.Addr() != be1.Addr {
		t.Fatalf("first flow on %s", out.dst)
	}
	term := be1
	term.Terminating = true
	mustUpsert(t, d, svc, term, be2)

	old.tcpFlags = tcpACK
	for range 10 {
		if _, out := run(t, d, "pod-in", ifindex, old); out.dst.Addr() != be1.Addr {
			t.Fatalf("existing flow moved to %s", out.dst)
		}
	}
	for port := range uint16(200) {
		p := packet{src: netip.AddrPortFrom(clientIP, 10000+port), dst: old.dst, proto: TCP, tcpFlags: tcpSYN}
		if _, out := run(t, d, "pod-in", ifindex, p); out.dst.Addr() != be2.Addr {
			t.Fatalf("new flow went to %s, want only the ready backend", out.dst)
		}
	}

	// Once the backend is gone entirely its flows are re-balanced instead of black-holed.
	mustUpsert(t, d, svc, be2)
	if _, out := run(t, d, "pod-in", ifindex, old); out.dst.Addr() != be2.Addr {
		t.Fatalf("flow of a removed backend went to %s", out.dst)
	}
}

func TestSessionAffinity(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	svc := Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}, AffinityTimeout: time.Second}
	mustUpsert(t, d, svc, be1, be2, be3)

	for c := range 20 {
		src := netip.AddrFrom4([4]byte{10, 244, 9, byte(c + 1)})
		var first netip.AddrPort
		for port := range uint16(10) {
			_, out := run(t, d, "pod-in", ifindex, packet{src: netip.AddrPortFrom(src, 20000+port),
				dst: netip.AddrPortFrom(vip, 80), proto: TCP, tcpFlags: tcpSYN})
			if port == 0 {
				first = out.dst
			} else if out.dst != first {
				t.Fatalf("client %s: connection %d went to %s, first to %s", src, port, out.dst, first)
			}
		}
	}

	// After the timeout a client is balanced afresh: over 30 rounds of expiry at least one
	// must land elsewhere (random over 3 backends: a miss chance of (1/3)^30).
	src := netip.MustParseAddr("10.244.9.200")
	pick := func(port uint16) netip.AddrPort {
		_, out := run(t, d, "pod-in", ifindex, packet{src: netip.AddrPortFrom(src, port),
			dst: netip.AddrPortFrom(vip, 80), proto: TCP, tcpFlags: tcpSYN})
		return out.dst
	}
	first := pick(1)
	// Age the record instead of sleeping 30 s: rewrite its last-used time.
	key := sockAffinityKey{SvcId: d.services[svc.ServiceKey].id, Client: uint64(binary.BigEndian.Uint32(src.AsSlice()))}
	moved := false
	for i := range uint16(30) {
		var v sockAffinityVal
		if err := d.sock.Affinity4.Lookup(key, &v); err != nil {
			t.Fatalf("affinity record: %v", err)
		}
		v.LastUsed -= uint64(2 * time.Second)
		if err := d.sock.Affinity4.Put(key, v); err != nil {
			t.Fatal(err)
		}
		if pick(2+i) != first {
			moved = true
			break
		}
	}
	if !moved {
		t.Fatal("affinity never expired")
	}
}

// TestConntrackSweep covers flows whose expiry timer never armed (bpf_timer_init fails under
// load): the sweep deletes them with their reply twins, gives back their least-conn count,
// removes reply entries left alone, and keeps live flows.
func TestConntrackSweep(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 53, Proto: UDP}, Algorithm: LeastConn}, be1)

	dead := packet{src: netip.AddrPortFrom(clientIP, 7100), dst: netip.AddrPortFrom(vip, 53), proto: UDP}
	live := packet{src: netip.AddrPortFrom(clientIP, 7101), dst: netip.AddrPortFrom(vip, 53), proto: UDP}
	run(t, d, "pod-in", ifindex, dead)
	run(t, d, "pod-in", ifindex, live)
	if n := conns(t, d, be1, UDP); n != 2 {
		t.Fatalf("least-conn count %d, want 2", n)
	}
	// Rewriting the forward entry from userspace replaces the element: the new one has no
	// armed timer, like a flow whose bpf_timer_init failed. Its expiry is in the past.
	k := sockCtKey{Saddr: addrU32(clientIP), Daddr: addrU32(vip), Sport: portBE(7100), Dport: portBE(53), Proto: uint8(UDP)}
	var v sockCtEntry
	if err := d.sock.Ct4.Lookup(&k, &v); err != nil {
		t.Fatalf("forward entry of the flow: %v", err)
	}
	v.Expires = 1
	if err := d.sock.Ct4.Update(&k, &v, 0); err != nil {
		t.Fatal(err)
	}
	// A reply entry whose forward entry is gone.
	orphan := sockCtKey{Saddr: addrU32(be2.Addr), Daddr: addrU32(clientIP), Sport: portBE(be2.Port), Dport: portBE(7200), Proto: uint8(TCP), Dir: 1}
	ov := sockCtEntry{SrcAddr: addrU32(vip), SrcPort: portBE(80), Flags: ctFlagRewriteSrc}
	if err := d.sock.Ct4.Update(&orphan, &ov, 0); err != nil {
		t.Fatal(err)
	}
	if n := ctEntries(t, d); n != 5 {
		t.Fatalf("%d entries before the sweep, want 5", n)
	}

	n, err := d.SweepConntrack()
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("sweep deleted %d entries, want 3 (the dead flow's two and the orphan)", n)
	}
	if n := ctEntries(t, d); n != 2 {
		t.Fatalf("%d entries after the sweep, want the live flow's 2", n)
	}
	if n := conns(t, d, be1, UDP); n != 1 {
		t.Fatalf("least-conn count %d after the sweep, want the live flow's 1", n)
	}
	if n, err := d.SweepConntrack(); err != nil || n != 0 {
		t.Fatalf("second sweep: deleted %d, err %v; want nothing", n, err)
	}
}
