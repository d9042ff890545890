package ebpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
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
