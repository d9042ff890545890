package ebpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/dataplane/policy"
)

// benchProg runs prog once per iteration on pkt(i) and reports the kernel-measured time per
// packet ("ns/pkt"); ns/op also counts the syscall. One run per call because the programs
// rewrite the packet in place: a repeated run would measure the translated packet.
func benchProg(b *testing.B, prog *ebpf.Program, pkt func(i int) []byte) {
	var (
		total time.Duration
		n     int
	)
	for b.Loop() {
		_, d, err := prog.Benchmark(pkt(n), 1, nil)
		if err != nil {
			b.Fatal(err)
		}
		total += d
		n++
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(n), "ns/pkt")
}

// benchProgRepeat is benchProg for a packet the program leaves as it is: the kernel runs it
// many times per call, so the syscall and skb set-up fade from the figure.
func benchProgRepeat(b *testing.B, prog *ebpf.Program, pkt []byte) {
	const repeat = 1000
	var total time.Duration
	n := 0
	for b.Loop() {
		_, d, err := prog.Benchmark(pkt, repeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		total += d * repeat
		n += repeat
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(n), "ns/pkt")
}

func benchClient(i int) netip.AddrPort {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], 0x0ac80000+uint32(i>>14))
	return netip.AddrPortFrom(netip.AddrFrom4(a), uint16(1024+i&0x3fff))
}

func benchSetup(b *testing.B, algo Algorithm) (*Datapath, ServiceKey) {
	enterTestNetns(b)
	d := newTestDatapath(b, testConfig())
	if err := d.SetNodeAddrs([]netip.Addr{nodeIP}); err != nil {
		b.Fatal(err)
	}
	key := ServiceKey{Addr: vip, Port: 80, Proto: TCP}
	mustUpsert(b, d, Service{ServiceKey: key, Algorithm: algo}, manyBackends(8)...)
	mustUpsert(b, d, Service{ServiceKey: ServiceKey{Port: 30080, Proto: TCP}, Algorithm: algo}, manyBackends(8)...)
	return d, key
}

func BenchmarkPodIngress(b *testing.B) {
	b.Run("established", func(b *testing.B) {
		d, key := benchSetup(b, Random)
		p := packet{src: netip.AddrPortFrom(clientIP, 40000), dst: netip.AddrPortFrom(key.Addr, key.Port),
			proto: TCP, tcpFlags: tcpACK}.bytes()
		benchProg(b, d.Programs().PodIngress, func(int) []byte { return p })
	})
	for _, algo := range []Algorithm{Random, RoundRobin, LeastConn, SourceHash} {
		b.Run("new-flow/"+algo.String(), func(b *testing.B) {
			d, key := benchSetup(b, algo)
			benchProg(b, d.Programs().PodIngress, func(i int) []byte {
				return packet{src: benchClient(i), dst: netip.AddrPortFrom(key.Addr, key.Port),
					proto: TCP, tcpFlags: tcpSYN}.bytes()
			})
		})
	}
	b.Run("not-a-service", func(b *testing.B) {
		d, _ := benchSetup(b, Random)
		p := packet{src: netip.AddrPortFrom(clientIP, 40000), dst: ap("10.244.7.7:80"), proto: TCP, tcpFlags: tcpACK}.bytes()
		benchProg(b, d.Programs().PodIngress, func(int) []byte { return p })
	})
}

func BenchmarkPodEgress(b *testing.B) {
	b.Run("reply", func(b *testing.B) {
		d, key := benchSetup(b, Random)
		client := netip.AddrPortFrom(clientIP, 40000)
		_, out := run(b, d, "pod-in", 0, packet{src: client, dst: netip.AddrPortFrom(key.Addr, key.Port), proto: TCP, tcpFlags: tcpSYN})
		p := packet{src: out.dst, dst: client, proto: TCP, tcpFlags: tcpACK}.bytes()
		benchProg(b, d.Programs().PodEgress, func(int) []byte { return p })
	})
}

func BenchmarkNodeIngress(b *testing.B) {
	front := netip.AddrPortFrom(nodeIP, 30080)
	b.Run("nodeport-established", func(b *testing.B) {
		d, _ := benchSetup(b, Random)
		p := packet{src: netip.AddrPortFrom(extClient, 5555), dst: front, proto: TCP, tcpFlags: tcpACK}.bytes()
		benchProg(b, d.Programs().NodeIngress, func(int) []byte { return p })
	})
	b.Run("nodeport-new-flow", func(b *testing.B) {
		d, _ := benchSetup(b, Random)
		benchProg(b, d.Programs().NodeIngress, func(i int) []byte {
			return packet{src: benchClient(i), dst: front, proto: TCP, tcpFlags: tcpSYN}.bytes()
		})
	})
}

func BenchmarkNodeEgress(b *testing.B) {
	b.Run("not-translated", func(b *testing.B) {
		d, _ := benchSetup(b, Random)
		p := packet{src: netip.AddrPortFrom(nodeIP, 22), dst: netip.AddrPortFrom(extClient, 50000), proto: TCP, tcpFlags: tcpACK}.bytes()
		benchProg(b, d.Programs().NodeEgress, func(int) []byte { return p })
	})
}

func BenchmarkPodRouting(b *testing.B) {
	setup := func(b *testing.B, cfg Config) *Datapath {
		ifindex := enterTestNetns(b)
		cfg.VXLANIfindex = ifindex
		d := newTestDatapath(b, cfg)
		if err := d.UpsertEndpoint(localPod); err != nil {
			b.Fatal(err)
		}
		if err := d.UpsertTunnelRoute(netip.MustParsePrefix("10.244.3.0/24"), netip.MustParseAddr("192.168.50.11")); err != nil {
			b.Fatal(err)
		}
		return d
	}
	b.Run("local-pod", func(b *testing.B) {
		d := setup(b, testConfig())
		p := fromClient(netip.AddrPortFrom(clientIP, 40000), netip.AddrPortFrom(localPod.IP, 80), TCP, tcpACK).bytes()
		benchProg(b, d.Programs().PodIngress, func(int) []byte { return p })
	})
	b.Run("remote-pod-vxlan", func(b *testing.B) {
		cfg := testConfig()
		cfg.Routing = RoutingVXLAN
		d := setup(b, cfg)
		p := fromClient(netip.AddrPortFrom(clientIP, 40000), ap("10.244.3.4:80"), TCP, tcpACK).bytes()
		benchProg(b, d.Programs().PodIngress, func(int) []byte { return p })
	})
	b.Run("tunnel-to-local-pod", func(b *testing.B) {
		cfg := testConfig()
		cfg.Routing = RoutingVXLAN
		d := setup(b, cfg)
		p := packet{src: ap("10.244.3.4:80"), dst: netip.AddrPortFrom(localPod.IP, 40000), proto: TCP, tcpFlags: tcpACK}.bytes()
		benchProg(b, d.Programs().TunnelIngress, func(int) []byte { return p })
	})
}

func BenchmarkMasquerade(b *testing.B) {
	b.Run("established", func(b *testing.B) {
		ifindex := enterTestNetns(b)
		d := newTestDatapath(b, masqConfig())
		p := packet{src: netip.AddrPortFrom(clientIP, 40000), dst: netip.AddrPortFrom(extClient, 443), proto: TCP, tcpFlags: tcpSYN}
		run(b, d, "node-out", ifindex, p)
		p.tcpFlags = tcpACK
		pb := p.bytes()
		benchProg(b, d.Programs().NodeEgress, func(int) []byte { return pb })
	})
	b.Run("new-flow", func(b *testing.B) {
		enterTestNetns(b)
		d := newTestDatapath(b, masqConfig())
		benchProg(b, d.Programs().NodeEgress, func(i int) []byte {
			c := benchClient(i)
			return packet{src: netip.AddrPortFrom(clientIP, c.Port()), dst: netip.AddrPortFrom(extClient, 443+uint16(i>>14)),
				proto: TCP, tcpFlags: tcpSYN}.bytes()
		})
	})
}

// The cgroup socket programs have no BPF_PROG_RUN support, so this one times real connect()
// calls of UDP sockets (no packets are sent): socket LB cost plus the syscalls.
func BenchmarkSockConnect4(b *testing.B) {
	enterTestNetns(b)
	d := newTestDatapath(b, testConfig())
	enterTestCgroup(b, d)
	mustUpsert(b, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 9000, Proto: UDP}}, loBackends(8)...)
	sa := &unix.SockaddrInet4{Addr: vip.As4(), Port: 9000}
	for b.Loop() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Connect(fd, sa); err != nil {
			b.Fatal(err)
		}
		unix.Close(fd)
	}
}

// policyBenchState isolates polB for ingress with n rules: n peer /32s, each admitted on its
// own TCP port, so both tries hold n entries. The measured client is the last peer.
func policyBenchState(n int) (*policy.State, netip.AddrPort) {
	if n == 0 {
		return &policy.State{}, netip.AddrPortFrom(polA, 40000)
	}
	pol := types.NamespacedName{Namespace: "bench", Name: "p"}
	var entries []policy.Entry
	var last netip.AddrPort
	for i := range n {
		peer := netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)})
		port := uint16(1000 + i)
		entries = append(entries, policy.Entry{Prefix: netip.PrefixFrom(peer, 32),
			Ports: []policy.PortRange{{Protocol: v1.ProtocolTCP, First: port, Last: port, Policy: pol}}})
		last = netip.AddrPortFrom(peer, port)
	}
	return &policy.State{Endpoints: []policy.Endpoint{{Pod: types.NamespacedName{Namespace: "bench", Name: "b"},
		Addr: polB, Ingress: &policy.Rules{Policies: []types.NamespacedName{pol}, Entries: entries}}}}, last
}

// BenchmarkPolicy is the per-packet cost of NetworkPolicy at a pod's interface (the host veth's
// egress, where the pod's ingress rules apply) with 0, 100 and 1,000 rules selecting the pod.
func BenchmarkPolicy(b *testing.B) {
	for _, n := range []int{0, 100, 1000} {
		setup := func(b *testing.B) (*Datapath, netip.AddrPort) {
			enterTestNetns(b)
			cfg := testConfig()
			cfg.Connections = 1 << 19
			d := newTestDatapath(b, cfg)
			st, peer := policyBenchState(n)
			if problems, err := d.SyncPolicy(st); err != nil || len(problems) > 0 {
				b.Fatal(err, problems)
			}
			return d, peer
		}
		b.Run(fmt.Sprintf("rules=%d/established", n), func(b *testing.B) {
			d, peer := setup(b)
			src := netip.AddrPortFrom(peer.Addr(), 40000)
			dst := netip.AddrPortFrom(polB, peer.Port())
			_, _ = runTC(b, d.Programs().PodEgress, 0, packet{src: src, dst: dst, proto: TCP, tcpFlags: tcpSYN}.bytes())
			benchProgRepeat(b, d.Programs().PodEgress, packet{src: src, dst: dst, proto: TCP, tcpFlags: tcpACK}.bytes())
		})
		b.Run(fmt.Sprintf("rules=%d/new-flow", n), func(b *testing.B) {
			d, peer := setup(b)
			benchProg(b, d.Programs().PodEgress, func(i int) []byte {
				src := netip.AddrPortFrom(peer.Addr(), uint16(1024+i%60000))
				return packet{src: src, dst: netip.AddrPortFrom(polB, peer.Port()), proto: TCP, tcpFlags: tcpSYN}.bytes()
			})
		})
		if n > 0 {
			b.Run(fmt.Sprintf("rules=%d/denied", n), func(b *testing.B) {
				d, peer := setup(b)
				benchProgRepeat(b, d.Programs().PodEgress, packet{src: netip.AddrPortFrom(polC, 40000),
					dst: netip.AddrPortFrom(polB, peer.Port()), proto: TCP, tcpFlags: tcpSYN}.bytes())
			})
		}
	}
}
