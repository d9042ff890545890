package ebpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
)

var (
	localPod = Endpoint{IP: netip.MustParseAddr("10.244.0.7"), HostIfindex: 4242,
		HostMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x07, 0x01}, PodMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x07, 0x02}}
	clientPod = Endpoint{IP: clientIP, HostIfindex: 4243,
		HostMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x05, 0x01}, PodMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x05, 0x02}}
	// clientMACs are what a packet from clientPod carries: to its gateway, from its eth0.
	clientMACs = packet{srcMAC: [6]byte(clientPod.PodMAC), dstMAC: [6]byte(clientPod.HostMAC)}
)

func fromClient(src, dst netip.AddrPort, proto Protocol, flags uint8) packet {
	p := clientMACs
	p.src, p.dst, p.proto, p.tcpFlags = src, dst, proto, flags
	p.payload = []byte("payload")
	return p
}

func counters(t testing.TB, d *Datapath) map[string]uint64 {
	t.Helper()
	c, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setTTL rewrites the IP TTL of an Ethernet/IPv4 packet and its header checksum.
func setTTL(b []byte, ttl uint8) []byte {
	ip := b[14:34]
	ip[8] = ttl
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], fold(csum(0, ip)))
	return b
}

// icmpEcho is an Ethernet/IPv4 ICMP echo request.
func icmpEcho(srcMAC, dstMAC [6]byte, src, dst netip.Addr) []byte {
	icmp := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1, 'p', 'i', 'n', 'g'}
	binary.BigEndian.PutUint16(icmp[2:], fold(csum(0, icmp)))
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	ip[8] = 64
	ip[9] = 1
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], fold(csum(0, ip)))
	out := append(append(append([]byte{}, dstMAC[:]...), srcMAC[:]...), 0x08, 0x00)
	return append(append(out, ip...), icmp...)
}

func checkDelivered(t *testing.T, what string, ret uint32, out parsed, to Endpoint) {
	t.Helper()
	if ret != tcActRedirect {
		t.Fatalf("%s: verdict %d, want TC_ACT_REDIRECT (redirect_peer)", what, ret)
	}
	if out.dstMAC != [6]byte(to.PodMAC) || out.srcMAC != [6]byte(to.HostMAC) {
		t.Fatalf("%s: MACs %x -> %x, want %s -> %s", what, out.srcMAC, out.dstMAC, to.HostMAC, to.PodMAC)
	}
	if out.ttl != 63 {
		t.Fatalf("%s: TTL %d, want 63: the node is a routed hop", what, out.ttl)
	}
}

func TestPodToLocalPodRedirectPeer(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	for _, ep := range []Endpoint{localPod, clientPod} {
		if err := d.UpsertEndpoint(ep); err != nil {
			t.Fatal(err)
		}
	}
	w := d.MapWrites()
	if err := d.UpsertEndpoint(localPod); err != nil {
		t.Fatal(err)
	}
	if d.MapWrites() != w {
		t.Fatal("an identical endpoint upsert wrote the map")
	}

	// Pod to pod: straight into the peer, addresses and payload untouched.
	req := fromClient(netip.AddrPortFrom(clientIP, 40000), netip.AddrPortFrom(localPod.IP, 8080), TCP, tcpSYN)
	ret, out := run(t, d, "pod-in", ifindex, req)
	checkDelivered(t, "pod to pod", ret, out, localPod)
	if out.src != req.src || out.dst != req.dst || !bytes.Equal(out.payload, req.payload) {
		t.Fatalf("packet changed: %s -> %s %q", out.src, out.dst, out.payload)
	}
	if n := counters(t, d)["redirect_peer"]; n != 1 {
		t.Fatalf("redirect_peer counter %d, want 1", n)
	}

	// ICMP is routed the same way (nothing to translate in it).
	ret, outb := runTC(t, d.Programs().PodIngress, ifindex,
		icmpEcho(clientMACs.srcMAC, clientMACs.dstMAC, clientIP, localPod.IP))
	icmp, err := parsePacket(outb)
	if err != nil {
		t.Fatal(err)
	}
	checkDelivered(t, "ICMP", ret, icmp, localPod)

	// Through a service: DNAT to the local backend, delivered; its reply reverse-translated
	// and delivered to the client pod.
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}},
		Backend{Addr: localPod.IP, Port: 8080})
	svcReq := fromClient(netip.AddrPortFrom(clientIP, 40001), netip.AddrPortFrom(vip, 80), TCP, tcpSYN)
	ret, out = run(t, d, "pod-in", ifindex, svcReq)
	checkDelivered(t, "to service", ret, out, localPod)
	if out.dst != netip.AddrPortFrom(localPod.IP, 8080) {
		t.Fatalf("service packet went to %s", out.dst)
	}
	reply := packet{srcMAC: [6]byte(localPod.PodMAC), dstMAC: [6]byte(localPod.HostMAC),
		src: out.dst, dst: svcReq.src, proto: TCP, tcpFlags: tcpSYN | tcpACK}
	ret, out = run(t, d, "pod-in", ifindex, reply)
	checkDelivered(t, "service reply", ret, out, clientPod)
	if out.src != svcReq.dst || out.dst != svcReq.src {
		t.Fatalf("service reply %s -> %s, want %s -> %s", out.src, out.dst, svcReq.dst, svcReq.src)
	}
	if n := counters(t, d)["redirect_peer"]; n != 4 {
		t.Fatalf("redirect_peer counter %d, want 4", n)
	}

	// An expiring packet is the stack's, which answers with time exceeded.
	if ret, _ := runTC(t, d.Programs().PodIngress, ifindex, setTTL(req.bytes(), 1)); ret != tcActOK {
		t.Fatalf("TTL 1: verdict %d, want TC_ACT_OK", ret)
	}

	// Not a local pod (any more): the stack routes it.
	if err := d.DeleteEndpoint(localPod.IP); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteEndpoint(localPod.IP); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	ret, out = run(t, d, "pod-in", ifindex, req)
	if ret != tcActOK || out.dstMAC != clientMACs.dstMAC || out.ttl != 64 {
		t.Fatalf("deleted endpoint: verdict %d, dst MAC %x, TTL %d", ret, out.dstMAC, out.ttl)
	}
	eps, err := d.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || !eps[0].equal(clientPod) {
		t.Fatalf("endpoints %v, want only %v", eps, clientPod)
	}
}

func TestTunnelRouting(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	cfg.Routing = RoutingVXLAN
	cfg.VXLANIfindex = ifindex // BPF_PROG_RUN does not carry the redirect out
	vx := newTestDatapath(t, cfg)
	native := newTestDatapath(t, testConfig())
	remote := netip.MustParseAddr("192.168.50.11")
	for _, d := range []*Datapath{vx, native} {
		if err := d.SetNodeAddrs([]netip.Addr{nodeIP}); err != nil {
			t.Fatal(err)
		}
		if err := d.UpsertEndpoint(localPod); err != nil {
			t.Fatal(err)
		}
		routes := map[netip.Prefix]netip.Addr{
			netip.MustParsePrefix("10.244.0.0/16"): remote,
			// A longer prefix owned by this very node: never encapsulated.
			netip.MustParsePrefix("10.244.9.0/24"): nodeIP,
		}
		if err := d.SetTunnelRoutes(routes); err != nil {
			t.Fatal(err)
		}
		w := d.MapWrites()
		if err := d.SetTunnelRoutes(routes); err != nil {
			t.Fatal(err)
		}
		if d.MapWrites() != w {
			t.Fatal("an identical SetTunnelRoutes wrote the map")
		}
	}
	src := netip.AddrPortFrom(clientIP, 41000)
	toRemote := fromClient(src, ap("10.244.3.4:8080"), TCP, tcpSYN)

	ret, out := run(t, vx, "pod-in", ifindex, toRemote)
	if ret != tcActRedirect {
		t.Fatalf("vxlan mode, remote pod: verdict %d, want TC_ACT_REDIRECT to the vxlan device", ret)
	}
	if out.src != toRemote.src || out.dst != toRemote.dst || out.ttl != 63 {
		t.Fatalf("encapsulated packet changed: %s -> %s TTL %d", out.src, out.dst, out.ttl)
	}
	if c := counters(t, vx); c["tunnel_encap"] != 1 || c["redirect_peer"] != 0 {
		t.Fatalf("counters %v, want one tunnel_encap", c)
	}
	// ICMP too.
	if ret, _ := runTC(t, vx.Programs().PodIngress, ifindex,
		icmpEcho(clientMACs.srcMAC, clientMACs.dstMAC, clientIP, netip.MustParseAddr("10.244.3.4"))); ret != tcActRedirect {
		t.Fatalf("vxlan mode, ICMP to a remote pod: verdict %d", ret)
	}

	for _, c := range []struct {
		what string
		dst  netip.AddrPort
		want uint32
	}{
		{"local pod inside a tunnel route", netip.AddrPortFrom(localPod.IP, 80), tcActRedirect},
		{"route naming this node", ap("10.244.9.5:80"), tcActOK},
		{"outside the cluster", ap("192.0.2.1:443"), tcActOK},
	} {
		if ret, _ := run(t, vx, "pod-in", ifindex, fromClient(src, c.dst, TCP, tcpSYN)); ret != c.want {
			t.Errorf("vxlan mode, %s: verdict %d, want %d", c.what, ret, c.want)
		}
	}
	if c := counters(t, vx); c["tunnel_encap"] != 2 || c["redirect_peer"] != 1 {
		t.Fatalf("counters %v, want 2 tunnel_encap (TCP, ICMP) and 1 redirect_peer", c)
	}

	// Native mode leaves remote pods to the kernel's routes, whatever the tunnel map holds.
	ret, out = run(t, native, "pod-in", ifindex, toRemote)
	if ret != tcActOK || out.ttl != 64 {
		t.Fatalf("native mode, remote pod: verdict %d TTL %d, want TC_ACT_OK untouched", ret, out.ttl)
	}
	if c := counters(t, native); c["tunnel_encap"] != 0 {
		t.Fatalf("native mode encapsulated: %v", c)
	}

	// Decapsulated traffic: to a local pod into its netns, the rest to the stack.
	prog := vx.Programs().TunnelIngress
	in := packet{src: ap("10.244.3.4:8080"), dst: netip.AddrPortFrom(localPod.IP, 80), proto: TCP, tcpFlags: tcpACK}
	ret, outb := runTC(t, prog, ifindex, in.bytes())
	got, err := parsePacket(outb)
	if err != nil {
		t.Fatal(err)
	}
	checkDelivered(t, "decapsulated to a local pod", ret, got, localPod)
	in.dst = ap("10.244.0.99:80")
	if ret, _ := runTC(t, prog, ifindex, in.bytes()); ret != tcActOK {
		t.Fatalf("decapsulated, not a local endpoint: verdict %d, want TC_ACT_OK", ret)
	}
	if c := counters(t, vx); c["tunnel_deliver"] != 1 || c["tunnel_host"] != 1 {
		t.Fatalf("counters %v, want one tunnel_deliver and one tunnel_host", c)
	}

	// The node's own packets the stack routed into the VXLAN device get their tunnel key
	// there; a destination without a tunnel route cannot be sent.
	egress := vx.Programs().TunnelEgress
	host := packet{src: netip.AddrPortFrom(nodeIP, 40000), dst: ap("10.244.3.4:8080"), proto: TCP, tcpFlags: tcpSYN}
	if ret, _ := runTC(t, egress, ifindex, host.bytes()); ret != tcActOK {
		t.Fatalf("tunnel egress, host to remote pod: verdict %d, want TC_ACT_OK", ret)
	}
	if c := counters(t, vx); c["tunnel_encap"] != 3 {
		t.Fatalf("counters %v, want the host packet counted as tunnel_encap", c)
	}
	host.dst = ap("192.0.2.1:443")
	if ret, _ := runTC(t, egress, ifindex, host.bytes()); ret != tcActShot {
		t.Fatalf("tunnel egress, no tunnel route: verdict %d, want TC_ACT_SHOT", ret)
	}

	if err := vx.DeleteTunnelRoute(netip.MustParsePrefix("10.244.0.0/16")); err != nil {
		t.Fatal(err)
	}
	if ret, _ := run(t, vx, "pod-in", ifindex, toRemote); ret != tcActOK {
		t.Fatalf("after the route's deletion: verdict %d", ret)
	}
	routes, err := vx.TunnelRoutes()
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[netip.MustParsePrefix("10.244.9.0/24")] != nodeIP {
		t.Fatalf("tunnel routes %v", routes)
	}
}

func masqConfig() Config {
	cfg := testConfig()
	cfg.Masquerade = true
	cfg.ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	cfg.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
	return cfg
}

func TestMasquerade(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, masqConfig())
	if err := d.SetNodeAddrs([]netip.Addr{nodeIP}); err != nil {
		t.Fatal(err)
	}
	pod := netip.AddrPortFrom(clientIP, 40000)
	// On the node device's subnet, so the FIB names the node address as source.
	outside := netip.AddrPortFrom(extClient, 443)

	for _, proto := range []Protocol{TCP, UDP} {
		req := packet{src: pod, dst: outside, proto: proto, tcpFlags: tcpSYN, payload: []byte("hello")}
		ret, out := run(t, d, "node-out", ifindex, req)
		if ret != tcActOK {
			t.Fatalf("%s: verdict %d", proto, ret)
		}
		if out.src.Addr() != nodeIP || out.src.Port() < 61000 || out.dst != outside {
			t.Fatalf("%s: %s -> %s, want %s with a port from the SNAT range -> %s", proto, out.src, out.dst, nodeIP, outside)
		}
		snat := out.src

		// The pod's own veth sees the same tuple first: the masquerade entry is not a
		// service flow and must survive it.
		if ret, _ := run(t, d, "pod-in", ifindex, req); ret != tcActOK {
			t.Fatalf("%s: pod ingress verdict %d", proto, ret)
		}
		req.tcpFlags = tcpACK
		if _, out = run(t, d, "node-out", ifindex, req); out.src != snat {
			t.Fatalf("%s: second packet from %s, first from %s", proto, out.src, snat)
		}

		// The reply comes in on the node device and goes back to the pod.
		ret, out = run(t, d, "node-in", ifindex, packet{src: outside, dst: snat, proto: proto,
			tcpFlags: tcpSYN | tcpACK, payload: []byte("hi")})
		if ret != tcActRedirect {
			t.Fatalf("%s: reply verdict %d, want a FIB redirect", proto, ret)
		}
		if out.src != outside || out.dst != pod {
			t.Fatalf("%s: reply %s -> %s, want %s -> %s", proto, out.src, out.dst, outside, pod)
		}
	}
	if c := counters(t, d); c["masquerade_new"] != 2 || c["masquerade_fail"] != 0 {
		t.Fatalf("counters %v, want two new masqueraded flows", c)
	}
	var masq int
	for _, e := range ctDump(t, d) {
		if e.Masquerade {
			masq++
		}
	}
	if masq != 4 {
		t.Fatalf("%d masquerade conntrack entries, want forward and reply for TCP and UDP", masq)
	}

	for _, c := range []struct {
		what string
		p    packet
	}{
		{"pod to pod", packet{src: pod, dst: ap("10.244.1.2:80"), proto: TCP, tcpFlags: tcpSYN}},
		{"pod to service range", packet{src: pod, dst: ap("10.96.0.10:80"), proto: TCP, tcpFlags: tcpSYN}},
		{"pod to this node", packet{src: pod, dst: netip.AddrPortFrom(nodeIP, 10250), proto: TCP, tcpFlags: tcpSYN}},
		{"the node's own traffic", packet{src: netip.AddrPortFrom(nodeIP, 5000), dst: outside, proto: TCP, tcpFlags: tcpSYN}},
		{"mid-stream TCP of no known flow", packet{src: netip.AddrPortFrom(clientIP, 40500), dst: outside, proto: TCP, tcpFlags: tcpACK}},
	} {
		ret, out := run(t, d, "node-out", ifindex, c.p)
		if ret != tcActOK || out.src != c.p.src || out.dst != c.p.dst {
			t.Errorf("%s: verdict %d, %s -> %s, want it untouched", c.what, ret, out.src, out.dst)
		}
	}

	// No route to the destination: no source address to give it; it leaves as it is.
	far := packet{src: pod, dst: ap("203.0.113.5:443"), proto: UDP}
	if _, out := run(t, d, "node-out", ifindex, far); out.src != far.src {
		t.Fatalf("unroutable destination masqueraded to %s", out.src)
	}
	if c := counters(t, d); c["masquerade_fail"] != 1 {
		t.Fatalf("counters %v, want one masquerade_fail", c)
	}

	// Masquerade off: nothing is rewritten.
	cfg := masqConfig()
	cfg.Masquerade = false
	off := newTestDatapath(t, cfg)
	req := packet{src: netip.AddrPortFrom(clientIP, 40001), dst: outside, proto: TCP, tcpFlags: tcpSYN}
	if _, out := run(t, off, "node-out", ifindex, req); out.src != req.src {
		t.Fatalf("masquerade off, source rewritten to %s", out.src)
	}
}

func ctDump(t testing.TB, d *Datapath) []ConnEntry {
	t.Helper()
	p, err := OpenPinned(d.cfg.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	es, err := p.Conntrack(0)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func TestRoutingMapsSurviveReload(t *testing.T) {
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	d := newTestDatapath(t, cfg)
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	node := netip.MustParseAddr("192.168.50.7")
	if err := d.SetEndpoints([]Endpoint{localPod, clientPod}); err != nil {
		t.Fatal(err)
	}
	if err := d.UpsertTunnelRoute(cidr, node); err != nil {
		t.Fatal(err)
	}
	d.Close()

	d2 := newTestDatapath(t, cfg)
	eps, err := d2.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || !eps[0].equal(clientPod) || !eps[1].equal(localPod) {
		t.Fatalf("endpoints after reload: %v", eps)
	}
	routes, err := d2.TunnelRoutes()
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[cidr] != node {
		t.Fatalf("tunnel routes after reload: %v", routes)
	}

	// Full-state sets write only the difference.
	w := d2.MapWrites()
	if err := d2.SetEndpoints([]Endpoint{clientPod, localPod}); err != nil {
		t.Fatal(err)
	}
	if d2.MapWrites() != w {
		t.Fatal("an identical SetEndpoints wrote the map")
	}
	moved := localPod
	moved.HostIfindex = 77
	if err := d2.SetEndpoints([]Endpoint{moved}); err != nil {
		t.Fatal(err)
	}
	if got := d2.MapWrites() - w; got != 2 {
		t.Fatalf("%d writes to replace one endpoint and drop another, want 2", got)
	}

	// The inspection view reads the same maps.
	p, err := OpenPinned(cfg.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	peps, err := p.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if len(peps) != 1 || !peps[0].equal(moved) {
		t.Fatalf("pinned endpoints %v", peps)
	}
	proutes, err := p.TunnelRoutes()
	if err != nil || proutes[cidr] != node {
		t.Fatalf("pinned tunnel routes %v (%v)", proutes, err)
	}
	if _, err := p.Counters(); err != nil {
		t.Fatal(err)
	}
	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Name == "endpoints" && s.Entries != 1 {
			t.Fatalf("stats say %d endpoints", s.Entries)
		}
	}

	for _, bad := range []Endpoint{
		{IP: netip.MustParseAddr("fd00::1"), HostIfindex: 1, HostMAC: localPod.HostMAC, PodMAC: localPod.PodMAC},
		{IP: localPod.IP, HostIfindex: 0, HostMAC: localPod.HostMAC, PodMAC: localPod.PodMAC},
		{IP: localPod.IP, HostIfindex: 1, HostMAC: localPod.HostMAC[:3], PodMAC: localPod.PodMAC},
	} {
		if err := d2.UpsertEndpoint(bad); err == nil {
			t.Errorf("endpoint %v accepted", bad)
		}
	}
	if err := d2.UpsertTunnelRoute(netip.MustParsePrefix("fd00::/64"), node); err == nil {
		t.Error("IPv6 tunnel route accepted")
	}
}

func TestRoutingConfig(t *testing.T) {
	for _, c := range []Config{
		{PinDir: "x", Routing: "geneve"},
		{PinDir: "x", Routing: RoutingVXLAN},
		{PinDir: "x", Routing: RoutingVXLAN, VXLANIfindex: 3, VNI: 1 << 24},
		{PinDir: "x", ClusterCIDR: netip.MustParsePrefix("fd00::/48")},
	} {
		c.setDefaults()
		if err := c.validate(); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
	c := Config{PinDir: "x"}
	c.setDefaults()
	if err := c.validate(); err != nil || c.Routing != RoutingNative || c.VNI != DefaultVNI {
		t.Fatalf("defaults: routing %q vni %d err %v", c.Routing, c.VNI, err)
	}
	a, m := prefixU32(netip.MustParsePrefix("10.244.3.7/16"))
	if u32Addr(a) != netip.MustParseAddr("10.244.0.0") || u32Addr(m) != netip.MustParseAddr("255.255.0.0") {
		t.Fatalf("prefixU32: %s/%s", u32Addr(a), u32Addr(m))
	}
}

func TestAttachTunnelPinned(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	d1 := newTestDatapath(t, cfg)
	a1, err := d1.AttachTunnelPinned(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	name := "tunnel-" + itoa(ifindex) + "-ingress"
	egress := "tunnel-" + itoa(ifindex) + "-egress"
	first := pinnedLinks(t, cfg.PinDir)
	if len(first) != 2 || first[name][1] != progID(t, d1.Programs().TunnelIngress) ||
		first[egress][1] != progID(t, d1.Programs().TunnelEgress) {
		t.Fatalf("pinned links %v, want %s and %s running the tunnel programs", first, name, egress)
	}
	if err := a1.Release(); err != nil {
		t.Fatal(err)
	}
	d1.Close()

	// A restarted daemon takes the link over.
	d2 := newTestDatapath(t, cfg)
	a2, err := d2.AttachTunnelPinned(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	second := pinnedLinks(t, cfg.PinDir)
	if second[name][0] != first[name][0] || second[name][1] != progID(t, d2.Programs().TunnelIngress) ||
		second[egress][0] != first[egress][0] || second[egress][1] != progID(t, d2.Programs().TunnelEgress) {
		t.Fatalf("links %v after restart, were %v: want the same links running the new programs", second, first)
	}
	if err := a2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := pinnedLinks(t, cfg.PinDir); len(got) != 0 {
		t.Fatalf("links left after Close: %v", got)
	}
}

// TestSNATNearlyFull: with 18 of 20 SNAT ports held by live flows, a new flow still finds one
// of the 2 free ports. Random tries must be many for that: with 16, one flow in five failed
// (0.9^16), and a dropped SYN costs its client a 1 s retransmit.
func TestSNATNearlyFull(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := masqConfig()
	cfg.SNATPortMin, cfg.SNATPortMax = 62000, 62019
	d := newTestDatapath(t, cfg)
	if err := d.SetNodeAddrs([]netip.Addr{nodeIP}); err != nil {
		t.Fatal(err)
	}
	outside := netip.AddrPortFrom(extClient, 443)
	open := func(port uint16) (netip.AddrPort, bool) {
		p := packet{src: netip.AddrPortFrom(clientIP, port), dst: outside, proto: UDP, payload: []byte("x")}
		_, out := run(t, d, "node-out", ifindex, p)
		return out.src, out.src.Addr() == nodeIP
	}
	for i := range uint16(18) {
		if _, ok := open(41000 + i); !ok {
			t.Fatalf("flow %d of 18 not masqueraded", i+1)
		}
	}
	// The 19th flow, 50 times over: each is removed again, so the range stays 18/20 full.
	for i := range uint16(50) {
		port := 42000 + i
		src, ok := open(port)
		if !ok || src.Port() < 62000 || src.Port() > 62019 {
			t.Fatalf("try %d: a new flow with 2 of 20 SNAT ports free left as %s", i, src)
		}
		fwd := sockCtKey{Saddr: addrU32(clientIP), Daddr: addrU32(outside.Addr()), Sport: portBE(port), Dport: portBE(outside.Port()), Proto: uint8(UDP)}
		rep := sockCtKey{Saddr: addrU32(outside.Addr()), Daddr: addrU32(nodeIP), Sport: portBE(outside.Port()), Dport: portBE(src.Port()), Proto: uint8(UDP), Dir: 1}
		if err := errors.Join(d.sock.Ct4.Delete(&rep), d.sock.Ct4.Delete(&fwd)); err != nil {
			t.Fatalf("remove try %d: %v", i, err)
		}
	}
	if c := counters(t, d); c["masquerade_fail"] != 0 {
		t.Fatalf("counters %v, want no masquerade_fail", c)
	}
}
