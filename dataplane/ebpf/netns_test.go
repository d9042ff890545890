package ebpf

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/capstan-net/capstan/internal/netnstest"
)

// newNS creates a namespace with lo up. Unlike netnstest.New, it fails (not skips) without
// root, as every test in this package does.
func newNS(t *testing.T, name string) *netnstest.NS {
	t.Helper()
	requireRoot(t)
	return netnstest.New(t, name)
}

func mustNL(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// testPod is a pod wired into a node the way the capstan-cni plugin does it.
type testPod struct {
	ns *netnstest.NS
	ep Endpoint
}

// addPod makes a pod netns with eth0 (ip/32, gateway gw/32 on link, default via gw) and its
// host veth hostIf in the node (gw/32, route ip/32 dev hostIf, forwarding, rp_filter off).
func addPod(t *testing.T, node *netnstest.NS, hostIf string, ip, gw netip.Addr) *testPod {
	t.Helper()
	pod := newNS(t, "pod-"+ip.String())
	netnstest.Veth(t, node, hostIf, pod, "eth0")
	pod.AddAddr(t, "eth0", netip.PrefixFrom(ip, 32))
	pod.Route(t, "eth0", netip.PrefixFrom(gw, 32), netip.Addr{})
	pod.Route(t, "eth0", netip.MustParsePrefix("0.0.0.0/0"), gw)
	node.AddAddr(t, hostIf, netip.PrefixFrom(gw, 32))
	node.Route(t, hostIf, netip.PrefixFrom(ip, 32), netip.Addr{})
	node.Sysctl(t, "ipv4/ip_forward", "1", "ipv4/conf/"+hostIf+"/rp_filter", "0")
	host, eth0 := node.Link(t, hostIf), pod.Link(t, "eth0")
	return &testPod{ns: pod, ep: Endpoint{IP: ip, HostIfindex: host.Attrs().Index,
		HostMAC: host.Attrs().HardwareAddr, PodMAC: eth0.Attrs().HardwareAddr}}
}

// attach runs an Attach method in the node's namespace, where ifindexes are resolved.
func attach(t *testing.T, node *netnstest.NS, f func(int) (*Attachment, error), ifindex int) {
	t.Helper()
	var a *Attachment
	err := node.Do(func() (err error) {
		a, err = f(ifindex)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
}

// serveEcho listens on addr in ns; each connection gets its peer address on a line, then an
// echo of what it sends.
func serveEcho(t *testing.T, ns *netnstest.NS, addr string) {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				io.Copy(c, c)
			}()
		}
	}()
}

// roundTrip connects from ns to dst, pushes 256 KiB through the echo server and returns the
// peer address the server saw.
func roundTrip(t *testing.T, ns *netnstest.NS, dst string) netip.AddrPort {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", dst, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("connect from %s to %s: %v", ns.Name, dst, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read peer line from %s: %v", dst, err)
	}
	peer, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("capstan!"), 32<<10)
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("echo from %s: %v", dst, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo from %s: got %d bytes back, sent %d", dst, len(got), len(data))
	}
	return peer
}

func TestPodRoutingSameNode(t *testing.T) {
	node := newNS(t, "node")
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node"
	d := newTestDatapath(t, cfg)
	gw := netip.MustParseAddr("10.244.0.1")
	a := addPod(t, node, "capa", netip.MustParseAddr("10.244.0.2"), gw)
	b := addPod(t, node, "capb", netip.MustParseAddr("10.244.0.3"), gw)
	for _, p := range []*testPod{a, b} {
		attach(t, node, d.AttachPod, p.ep.HostIfindex)
		if err := d.UpsertEndpoint(p.ep); err != nil {
			t.Fatal(err)
		}
	}
	serveEcho(t, b.ns, "10.244.0.3:8080")

	peer := roundTrip(t, a.ns, "10.244.0.3:8080")
	if peer.Addr() != a.ep.IP {
		t.Fatalf("server saw %s, want pod a's address", peer)
	}
	c := counters(t, d)
	t.Logf("counters %v", c)
	// SYN, SYN-ACK, ACK and the data both ways, at the least.
	if c["redirect_peer"] < 6 {
		t.Fatalf("redirect_peer counter %d: the host stack carried the traffic", c["redirect_peer"])
	}

	// Without endpoint entries the stack routes it (host routes), and nothing is redirected.
	for _, p := range []*testPod{a, b} {
		if err := d.DeleteEndpoint(p.ep.IP); err != nil {
			t.Fatal(err)
		}
	}
	if peer := roundTrip(t, a.ns, "10.244.0.3:8080"); peer.Addr() != a.ep.IP {
		t.Fatalf("server saw %s through the stack", peer)
	}
	if n := counters(t, d)["redirect_peer"]; n != c["redirect_peer"] {
		t.Fatalf("redirect_peer went from %d to %d with no endpoints", c["redirect_peer"], n)
	}
}

// Underlay and pod addressing of the two-node cluster.
var (
	underlay   = netip.MustParsePrefix("192.168.77.0/24")
	nodeAIP    = netip.MustParseAddr("192.168.77.1")
	nodeBIP    = netip.MustParseAddr("192.168.77.2")
	outsideIP  = netip.MustParseAddr("192.168.77.100")
	podCIDRA   = netip.MustParsePrefix("10.244.1.0/24")
	podCIDRB   = netip.MustParsePrefix("10.244.2.0/24")
	clusterNet = netip.MustParsePrefix("10.244.0.0/16")
)

type testNode struct {
	ns  *netnstest.NS
	ip  netip.Addr
	d   *Datapath
	pod *testPod
}

// testCluster is two nodes and an outside host on one underlay (a bridge in a namespace of its
// own), each node with one pod. Nothing in it is reachable from the test's own namespace.
type testCluster struct {
	a, b    *testNode
	outside *netnstest.NS
}

func newTestCluster(t *testing.T, routing string) *testCluster {
	t.Helper()
	wire := newNS(t, "underlay")
	mustNL(t, "add bridge", wire.NL.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}))
	br := wire.Link(t, "br0")
	mustNL(t, "bridge up", wire.NL.LinkSetUp(br))
	plug := func(name string, ip netip.Addr) *netnstest.NS {
		n := newNS(t, name)
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "port-" + name, MasterIndex: br.Attrs().Index},
			PeerName: "eth0", PeerNamespace: netlink.NsFd(n.FD)}
		mustNL(t, "add underlay port", wire.NL.LinkAdd(v))
		mustNL(t, "port up", wire.NL.LinkSetUp(wire.Link(t, "port-"+name)))
		eth0 := n.Link(t, "eth0")
		mustNL(t, "eth0 up", n.NL.LinkSetUp(eth0))
		n.AddAddr(t, "eth0", netip.PrefixFrom(ip, underlay.Bits()))
		return n
	}
	c := &testCluster{outside: plug("outside", outsideIP)}
	bpffs := mountBPFFS(t)
	mkNode := func(name string, ip netip.Addr, cidr netip.Prefix) *testNode {
		n := &testNode{ns: plug(name, ip), ip: ip}
		cfg := testConfig()
		cfg.PinDir = bpffs + "/" + name
		cfg.Routing = routing
		cfg.Masquerade = true
		cfg.ClusterCIDR = clusterNet
		cfg.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
		if routing == RoutingVXLAN {
			vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "capstan-vxlan"}, FlowBased: true, Port: 8472}
			mustNL(t, "add vxlan device", n.ns.NL.LinkAdd(vx))
			dev := n.ns.Link(t, "capstan-vxlan")
			mustNL(t, "vxlan up", n.ns.NL.LinkSetUp(dev))
			n.ns.Sysctl(t, "ipv4/conf/capstan-vxlan/rp_filter", "0")
			cfg.VXLANIfindex = dev.Attrs().Index
		}
		n.d = newTestDatapath(t, cfg)
		if err := n.d.SetNodeAddrs([]netip.Addr{ip}); err != nil {
			t.Fatal(err)
		}
		if routing == RoutingVXLAN {
			attach(t, n.ns, n.d.AttachTunnel, cfg.VXLANIfindex)
		}
		attach(t, n.ns, n.d.AttachNode, n.ns.Link(t, "eth0").Attrs().Index)
		first := cidr.Addr().Next()
		n.pod = addPod(t, n.ns, "cap"+name, first.Next(), first)
		attach(t, n.ns, n.d.AttachPod, n.pod.ep.HostIfindex)
		if err := n.d.UpsertEndpoint(n.pod.ep); err != nil {
			t.Fatal(err)
		}
		return n
	}
	c.a = mkNode("a", nodeAIP, podCIDRA)
	c.b = mkNode("b", nodeBIP, podCIDRB)
	return c
}

func (n *testNode) routeTo(t *testing.T, cidr netip.Prefix, via netip.Addr) {
	t.Helper()
	mustNL(t, "add pod CIDR route", n.ns.NL.RouteAdd(&netlink.Route{Dst: netnstest.IPNet(cidr), Gw: via.AsSlice()}))
}

func TestCrossNodeVXLAN(t *testing.T) {
	c := newTestCluster(t, RoutingVXLAN)
	// Tunnel routes only: neither node has a kernel route to the other's pods.
	if err := c.a.d.UpsertTunnelRoute(podCIDRB, nodeBIP); err != nil {
		t.Fatal(err)
	}
	if err := c.b.d.UpsertTunnelRoute(podCIDRA, nodeAIP); err != nil {
		t.Fatal(err)
	}
	serveEcho(t, c.b.pod.ns, netip.AddrPortFrom(c.b.pod.ep.IP, 8080).String())
	dst := netip.AddrPortFrom(c.b.pod.ep.IP, 8080).String()

	if peer := roundTrip(t, c.a.pod.ns, dst); peer.Addr() != c.a.pod.ep.IP {
		t.Fatalf("pod b saw %s, want pod a's address (no masquerade inside the cluster)", peer)
	}
	ca, cb := counters(t, c.a.d), counters(t, c.b.d)
	t.Logf("node a counters %v, node b counters %v", ca, cb)
	if ca["tunnel_encap"] == 0 || cb["tunnel_encap"] == 0 {
		t.Fatalf("tunnel_encap a=%d b=%d, want both directions encapsulated", ca["tunnel_encap"], cb["tunnel_encap"])
	}
	if ca["tunnel_deliver"] == 0 || cb["tunnel_deliver"] == 0 {
		t.Fatalf("tunnel_deliver a=%d b=%d, want both directions delivered from the tunnel", ca["tunnel_deliver"], cb["tunnel_deliver"])
	}
	if ca["masquerade_new"] != 0 || cb["masquerade_new"] != 0 {
		t.Fatal("pod-to-pod traffic was masqueraded")
	}

	// Without its endpoint entry, node b hands decapsulated packets to its stack, which
	// routes them to the pod by the host route.
	if err := c.b.d.DeleteEndpoint(c.b.pod.ep.IP); err != nil {
		t.Fatal(err)
	}
	if peer := roundTrip(t, c.a.pod.ns, dst); peer.Addr() != c.a.pod.ep.IP {
		t.Fatalf("through node b's stack pod b saw %s", peer)
	}
	if n := counters(t, c.b.d)["tunnel_host"]; n == 0 {
		t.Fatal("tunnel_host counter did not move")
	}

	// Without the tunnel route there is no way across: the test can fail.
	if err := c.a.d.DeleteTunnelRoute(podCIDRB); err != nil {
		t.Fatal(err)
	}
	err := c.a.pod.ns.Do(func() error {
		conn, err := net.DialTimeout("tcp4", dst, 500*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err
	})
	if err == nil {
		t.Fatal("connected across nodes with no route")
	}
}

func TestCrossNodeNative(t *testing.T) {
	c := newTestCluster(t, RoutingNative)
	c.a.routeTo(t, podCIDRB, nodeBIP)
	c.b.routeTo(t, podCIDRA, nodeAIP)
	dst := netip.AddrPortFrom(c.b.pod.ep.IP, 8080).String()
	serveEcho(t, c.b.pod.ns, dst)

	if peer := roundTrip(t, c.a.pod.ns, dst); peer.Addr() != c.a.pod.ep.IP {
		t.Fatalf("pod b saw %s, want pod a's address", peer)
	}
	for _, n := range []*testNode{c.a, c.b} {
		if cs := counters(t, n.d); cs["tunnel_encap"] != 0 || cs["masquerade_new"] != 0 {
			t.Fatalf("native pod-to-pod traffic encapsulated or masqueraded: %v", cs)
		}
	}
}

func TestMasqueradeToOutside(t *testing.T) {
	c := newTestCluster(t, RoutingNative)
	// The outside host has no route to the pod range: only a masqueraded connection works.
	dst := netip.AddrPortFrom(outsideIP, 9090).String()
	serveEcho(t, c.outside, dst)

	peer := roundTrip(t, c.a.pod.ns, dst)
	if peer.Addr() != nodeAIP {
		t.Fatalf("outside saw %s, want node a's address", peer)
	}
	if n := counters(t, c.a.d)["masquerade_new"]; n != 1 {
		t.Fatalf("masquerade_new %d, want 1", n)
	}
	var found bool
	for _, e := range ctDump(t, c.a.d) {
		if e.Masquerade && !e.Reply && e.Src.Addr() == c.a.pod.ep.IP && e.NewSrc == peer {
			found = true
		}
	}
	if !found {
		t.Fatalf("no masquerade conntrack entry for %s -> %s", c.a.pod.ep.IP, peer)
	}
}

// TestNodeToRemotePodUDP: a process on node b asks pod a over UDP (a probe, a DNS query). Its
// reply leaves node a towards an address outside the pod range, like traffic to the outside,
// yet must keep the pod's address: a connected UDP socket takes only datagrams from the
// address it sent to. Without node b among node a's peers, the reply is masqueraded.
func TestNodeToRemotePodUDP(t *testing.T) {
	c := newTestCluster(t, RoutingNative)
	c.a.routeTo(t, podCIDRB, nodeBIP)
	c.b.routeTo(t, podCIDRA, nodeAIP)
	pod := netip.AddrPortFrom(c.a.pod.ep.IP, 5353)
	var srv *net.UDPConn
	err := c.a.pod.ns.Do(func() (err error) {
		srv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(pod))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	ask := func() error {
		return c.b.ns.Do(func() error {
			conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(pod))
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(time.Second))
			if _, err := conn.Write([]byte("hostName")); err != nil {
				return err
			}
			_, err = conn.Read(make([]byte, 512))
			return err
		})
	}
	if err := ask(); err == nil {
		t.Fatal("a reply came back although node a masquerades it (the test cannot fail)")
	}
	if err := c.a.d.SetPeerNodes([]netip.Addr{nodeBIP}); err != nil {
		t.Fatal(err)
	}
	if err := ask(); err != nil {
		t.Fatalf("node b -> pod a over UDP with node b a peer of node a: %v", err)
	}
}
