package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tc verdicts (linux/pkt_cls.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

func requireRoot(tb testing.TB) {
	tb.Helper()
	// Not a skip: these tests exist to run against a real kernel, so a run that cannot is a
	// failure to notice, not a pass.
	if os.Geteuid() != 0 {
		tb.Fatal("BPF tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
	}
}

// testConfig is small enough that many datapaths fit in memory at once.
func testConfig() Config {
	return Config{
		ServiceEntries:  256,
		BackendEntries:  1024,
		Connections:     1 << 15,
		AffinityEntries: 1 << 15,
		MaglevSeed:      0x5eed,
	}
}

// newTestDatapath loads a datapath whose maps are pinned in a bpffs mounted just for the test.
func newTestDatapath(tb testing.TB, cfg Config) *Datapath {
	tb.Helper()
	requireRoot(tb)
	if cfg.PinDir == "" {
		cfg.PinDir = mountBPFFS(tb) + "/node"
	}
	d, err := Load(cfg)
	if errors.Is(err, ErrNotSupported) {
		tb.Skipf("kernel too old: %v", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

func mountBPFFS(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, ""); err != nil {
		tb.Fatalf("mount bpffs: %v", err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount bpffs: %v", err)
		}
	})
	return dir
}

// Test network, inside a network namespace of the test's own: the node device and the
// addresses the programs' FIB lookups resolve.
var (
	nodeIP     = netip.MustParseAddr("192.168.50.10")
	extClient  = netip.MustParseAddr("192.168.50.99")
	podCIDR    = netip.MustParsePrefix("10.244.0.0/16")
	nodeDevMAC = [6]byte{0x02, 0, 0, 0, 0, 0x10}
	peerMAC    = [6]byte{0x02, 0, 0, 0, 0, 0x99}
)

// enterTestNetns moves the calling goroutine, for the rest of its life, onto an OS thread in a
// fresh network namespace with a node device, and returns that device's ifindex.
// BPF_PROG_RUN runs in the caller's namespace, so every Run must come from this goroutine.
// The thread stays locked: Go ends it with the goroutine, and the namespace goes with it.
func enterTestNetns(tb testing.TB) int {
	tb.Helper()
	requireRoot(tb)
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		tb.Fatalf("unshare netns: %v", err)
	}
	ns, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		tb.Fatalf("read netns: %v", err)
	}
	testNetns.Store(ns)
	// The FIB helper only forwards when the device forwards.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		tb.Fatalf("enable forwarding: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		tb.Fatalf("find lo: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		tb.Fatalf("lo up: %v", err)
	}
	// A veth pair stands for the node's uplink (dummy devices may not be built in).
	dev := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "node0", HardwareAddr: nodeDevMAC[:]},
		PeerName: "wire0", PeerHardwareAddr: peerMAC[:]}
	if err := netlink.LinkAdd(dev); err != nil {
		tb.Fatalf("add node device: %v", err)
	}
	for _, name := range []string{"wire0", "node0"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			tb.Fatalf("find %s: %v", name, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			tb.Fatalf("%s up: %v", name, err)
		}
	}
	link, err := netlink.LinkByName("node0")
	if err != nil {
		tb.Fatalf("find node device: %v", err)
	}
	addr, _ := netlink.ParseAddr(nodeIP.String() + "/24")
	if err := netlink.AddrAdd(link, addr); err != nil {
		tb.Fatalf("add node address: %v", err)
	}
	// Pods elsewhere are reached through the node device; their neighbours stay unresolved,
	// which makes the programs use bpf_redirect_neigh.
	dst, _ := netlink.ParseIPNet(podCIDR.String())
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
		tb.Fatalf("add pod route: %v", err)
	}
	// One resolved neighbour, so the plain bpf_redirect path runs too.
	if err := netlink.NeighAdd(&netlink.Neigh{
		LinkIndex: link.Attrs().Index, IP: extClient.AsSlice(), HardwareAddr: peerMAC[:],
		State: netlink.NUD_PERMANENT, Family: unix.AF_INET,
	}); err != nil {
		tb.Fatalf("add neighbour: %v", err)
	}
	return link.Attrs().Index
}

// testNetns names the namespace enterTestNetns made last (tests using it run one at a time).
var testNetns atomic.Value

// packet is an Ethernet/IPv4/TCP-or-UDP packet for BPF_PROG_RUN, or one read back.
type packet struct {
	srcMAC, dstMAC [6]byte
	src, dst       netip.AddrPort
	proto          Protocol
	tcpFlags       uint8
	seq, ack       uint32
	payload        []byte
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func csum(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func pseudoSum(src, dst netip.Addr, proto uint8, l4len int) uint32 {
	s, d := src.As4(), dst.As4()
	sum := csum(0, s[:])
	sum = csum(sum, d[:])
	return sum + uint32(proto) + uint32(l4len)
}

func (p packet) bytes() []byte {
	var l4 []byte
	switch p.proto {
	case TCP:
		l4 = make([]byte, 20+len(p.payload))
		binary.BigEndian.PutUint16(l4[0:], p.src.Port())
		binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
		binary.BigEndian.PutUint32(l4[4:], p.seq)
		binary.BigEndian.PutUint32(l4[8:], p.ack)
		l4[12] = 5 << 4
		l4[13] = p.tcpFlags
		binary.BigEndian.PutUint16(l4[14:], 64240)
		copy(l4[20:], p.payload)
		binary.BigEndian.PutUint16(l4[16:], fold(csum(pseudoSum(p.src.Addr(), p.dst.Addr(), 6, len(l4)), l4)))
	case UDP:
		l4 = make([]byte, 8+len(p.payload))
		binary.BigEndian.PutUint16(l4[0:], p.src.Port())
		binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		copy(l4[8:], p.payload)
		binary.BigEndian.PutUint16(l4[6:], fold(csum(pseudoSum(p.src.Addr(), p.dst.Addr(), 17, len(l4)), l4)))
	case SCTP:
		// Common header only (ports, verification tag, CRC32c left zero): the programs
		// read the ports and nothing else.
		l4 = make([]byte, 12+len(p.payload))
		binary.BigEndian.PutUint16(l4[0:], p.src.Port())
		binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
		copy(l4[12:], p.payload)
	}
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	ip[8] = 64
	ip[9] = uint8(p.proto)
	s, d := p.src.Addr().As4(), p.dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], fold(csum(0, ip)))

	out := make([]byte, 0, 14+len(ip)+len(l4))
	out = append(out, p.dstMAC[:]...)
	out = append(out, p.srcMAC[:]...)
	out = append(out, 0x08, 0x00)
	out = append(out, ip...)
	return append(out, l4...)
}

// parsed is what a test checks in a packet a program emitted.
type parsed struct {
	packet
	ipProto  uint8
	ttl      uint8
	icmpType uint8
	icmpCode uint8
	quoted   []byte // ICMP: the quoted original IP header and 8 bytes
}

// parsePacket decodes b and verifies the IP and L4 checksums, so every test that looks at a
// translated packet also checks the incremental checksum updates.
func parsePacket(b []byte) (parsed, error) {
	var p parsed
	if len(b) < 34 || binary.BigEndian.Uint16(b[12:]) != 0x0800 {
		return p, errors.New("not IPv4 over Ethernet")
	}
	copy(p.dstMAC[:], b[0:6])
	copy(p.srcMAC[:], b[6:12])
	ip := b[14:]
	ihl := int(ip[0]&0x0f) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot > len(ip) || ihl < 20 {
		return p, fmt.Errorf("bad IP lengths: total %d, header %d, have %d", tot, ihl, len(ip))
	}
	if fold(csum(0, ip[:ihl])) != 0 {
		return p, errors.New("bad IP header checksum")
	}
	src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	p.ipProto = ip[9]
	p.ttl = ip[8]
	l4 := ip[ihl:tot]
	switch p.ipProto {
	case 6, 17:
		if fold(csum(pseudoSum(src, dst, p.ipProto, len(l4)), l4)) != 0 {
			if !(p.ipProto == 17 && binary.BigEndian.Uint16(l4[6:]) == 0) {
				return p, fmt.Errorf("bad L4 checksum (proto %d)", p.ipProto)
			}
		}
		p.proto = Protocol(p.ipProto)
		p.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:]))
		p.dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:]))
		if p.ipProto == 6 {
			p.seq = binary.BigEndian.Uint32(l4[4:])
			p.ack = binary.BigEndian.Uint32(l4[8:])
			p.tcpFlags = l4[13]
			p.payload = l4[int(l4[12]>>4)*4:]
		} else {
			p.payload = l4[8:]
		}
	case 1:
		if fold(csum(0, l4)) != 0 {
			return p, errors.New("bad ICMP checksum")
		}
		p.src = netip.AddrPortFrom(src, 0)
		p.dst = netip.AddrPortFrom(dst, 0)
		p.icmpType, p.icmpCode = l4[0], l4[1]
		p.quoted = l4[8:]
	default:
		return p, fmt.Errorf("unexpected IP protocol %d", p.ipProto)
	}
	return p, nil
}

// skbCtx is the start of struct __sk_buff, up to the fields BPF_PROG_RUN lets a test set.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority uint32
	IngressIfindex, Ifindex                                                               uint32
}

// runTC runs a tc program once on pkt as if it arrived on ifindex and returns the verdict and
// the packet as the program left it.
func runTC(tb testing.TB, prog *ebpf.Program, ifindex int, pkt []byte) (uint32, []byte) {
	tb.Helper()
	// A Run from another thread (a subtest, say) would look routes up in the host's namespace.
	if ns, _ := os.Readlink("/proc/thread-self/ns/net"); ns != testNetns.Load() {
		tb.Fatal("runTC called outside the test network namespace")
	}
	out := make([]byte, 2048)
	opts := &ebpf.RunOptions{
		Data:    pkt,
		DataOut: out,
		Context: skbCtx{Ifindex: uint32(ifindex)},
	}
	ret, err := prog.Run(opts)
	if err != nil {
		tb.Fatalf("BPF_PROG_RUN: %v", err)
	}
	return ret, opts.DataOut
}

// waitFor polls cond (state the kernel changes on its own, e.g. from a BPF timer) until it
// holds or the deadline passes.
func waitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
