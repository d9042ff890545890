package ebpf

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cgroup2Mount finds where the unified cgroup hierarchy is mounted (/sys/fs/cgroup, or
// /sys/fs/cgroup/unified on hybrid hosts).
func cgroup2Mount(tb testing.TB) string {
	tb.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if ok && strings.HasPrefix(post, "cgroup2 ") {
			return strings.Fields(pre)[4]
		}
	}
	tb.Fatal("no cgroup2 mount")
	return ""
}

func ownCgroup(tb testing.TB) string {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	tb.Fatal("not in a cgroup v2 hierarchy")
	return ""
}

// enterTestCgroup creates a cgroup, attaches the socket programs to it and moves the test
// process in, so its sockets are load-balanced; Cleanup moves it back and removes it all.
// Socket tests run serially: a cgroup holds whole processes, not goroutines.
func enterTestCgroup(tb testing.TB, d *Datapath) {
	tb.Helper()
	root := cgroup2Mount(tb)
	home := filepath.Join(root, ownCgroup(tb))
	dir, err := os.MkdirTemp(home, "capstan-test-")
	if err != nil {
		tb.Fatalf("create cgroup: %v", err)
	}
	att, err := d.AttachSocketLB(dir)
	if err != nil {
		os.Remove(dir)
		tb.Fatal(err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0); err != nil {
		att.Close()
		os.Remove(dir)
		tb.Fatalf("join cgroup: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(home, "cgroup.procs"), pid, 0); err != nil {
			tb.Errorf("leave cgroup: %v", err)
		}
		if err := att.Close(); err != nil {
			tb.Errorf("detach: %v", err)
		}
		if err := os.Remove(dir); err != nil {
			tb.Errorf("remove cgroup: %v", err)
		}
	})
}

// sockSetup gives a test a datapath, a netns whose loopback hosts the backends, and a cgroup
// with the socket programs.
func sockSetup(t *testing.T) *Datapath {
	enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	enterTestCgroup(t, d)
	return d
}

func lo(last byte) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, last}) }

func peerName(t *testing.T, c syscall.Conn) netip.AddrPort {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	var gerr error
	rc.Control(func(fd uintptr) { sa, gerr = unix.Getpeername(int(fd)) })
	if gerr != nil {
		t.Fatalf("getpeername: %v", gerr)
	}
	in := sa.(*unix.SockaddrInet4)
	return netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(in.Port))
}

func TestSockTCPConnect(t *testing.T) {
	d := sockSetup(t)
	ln, err := net.Listen("tcp4", "127.0.0.2:18080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}},
		Backend{Addr: lo(2), Port: 18080})

	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		c.Write(append([]byte("echo "), buf[:n]...))
	}()

	c, err := net.DialTimeout("tcp4", "10.96.0.10:80", 2*time.Second)
	if err != nil {
		t.Fatalf("dial service: %v", err)
	}
	defer c.Close()
	if got := peerName(t, c.(*net.TCPConn)); got != netip.AddrPortFrom(vip, 80) {
		t.Fatalf("getpeername says %s, want the service address", got)
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "echo ping" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
}

func TestSockUDP(t *testing.T) {
	d := sockSetup(t)
	srv, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo(3), 15353)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 53, Proto: UDP}},
		Backend{Addr: lo(3), Port: 15353})
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	front := netip.AddrPortFrom(vip, 53)

	// Unconnected: each datagram is balanced on its own, and replies show the service as
	// their source.
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo(1), 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	for i := range 3 {
		msg := fmt.Sprintf("q%d", i)
		if _, err := c.WriteToUDPAddrPort([]byte(msg), front); err != nil {
			t.Fatalf("sendto service: %v", err)
		}
		buf := make([]byte, 64)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("recvfrom: %v", err)
		}
		if from != front || string(buf[:n]) != msg {
			t.Fatalf("got %q from %s, want %q from %s", buf[:n], from, msg, front)
		}
	}

	// Connected.
	cc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.SetDeadline(time.Now().Add(2 * time.Second))
	if got := peerName(t, cc); got != front {
		t.Fatalf("getpeername says %s", got)
	}
	if _, err := cc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := cc.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
}

func TestSockNoEndpointsRefused(t *testing.T) {
	d := sockSetup(t)
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}})
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 53, Proto: UDP}})

	start := time.Now()
	_, err := net.DialTimeout("tcp4", "10.96.0.10:80", 5*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial: %v, want ECONNREFUSED", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("rejection was not immediate")
	}
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort([]byte("q"), netip.AddrPortFrom(vip, 53)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("sendto: %v, want ECONNREFUSED", err)
	}
}

// udpConnect connects a fresh UDP socket to the service and returns it with the backend the
// socket programs chose (read from the socket's reverse-NAT record).
func udpConnect(t *testing.T, d *Datapath, front netip.AddrPort, bs []Backend) (int, Backend) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: front.Addr().As4(), Port: int(front.Port())}); err != nil {
		unix.Close(fd)
		t.Fatalf("connect: %v", err)
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		var v sockSockRevnatVal
		k := sockSockRevnatKey{Cookie: cookie, Addr: addrU32(b.Addr), Port: portBE(b.Port)}
		if d.sock.SockRevnat4.Lookup(k, &v) == nil {
			return fd, b
		}
	}
	t.Fatal("socket has no reverse-NAT record")
	return 0, Backend{}
}

func loBackends(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Addr: lo(byte(10 + i)), Port: 9000}
	}
	return bs
}

func TestSockRoundRobinExact(t *testing.T) {
	d := sockSetup(t)
	bs := loBackends(4)
	front := netip.AddrPortFrom(vip, 9000)
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 9000, Proto: UDP}, Algorithm: RoundRobin}, bs...)

	counts := map[Backend]int{}
	for range syntheticClients {
		fd, b := udpConnect(t, d, front, bs)
		unix.Close(fd)
		counts[b]++
	}
	for _, b := range bs {
		if counts[b] != syntheticClients/len(bs) {
			t.Errorf("%s got %d connections, want exactly %d", b, counts[b], syntheticClients/len(bs))
		}
	}
}

// Least-conn on the socket path: connect() counts, close() gives back (sock_release).
func TestSockLeastConn(t *testing.T) {
	d := sockSetup(t)
	bs := loBackends(3)
	front := netip.AddrPortFrom(vip, 9000)
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 9000, Proto: UDP}, Algorithm: LeastConn}, bs...)

	rng := rand.New(rand.NewPCG(3, 4))
	type sock struct {
		fd int
		b  Backend
	}
	var open []sock
	load := func() map[Backend]uint32 {
		m := map[Backend]uint32{}
		for _, b := range bs {
			m[b] = conns(t, d, b, UDP)
		}
		return m
	}
	defer func() {
		for _, s := range open {
			unix.Close(s.fd)
		}
	}()
	for i := range 2000 {
		if len(open) > 0 && rng.IntN(10) < 4 {
			j := rng.IntN(len(open))
			unix.Close(open[j].fd)
			open = slices.Delete(open, j, j+1)
			continue
		}
		before := load()
		least := slices.Min([]uint32{before[bs[0]], before[bs[1]], before[bs[2]]})
		fd, b := udpConnect(t, d, front, bs)
		open = append(open, sock{fd, b})
		if before[b] != least {
			t.Fatalf("socket %d went to %s with %d connections, least had %d", i, b, before[b], least)
		}
	}
	want := map[Backend]uint32{}
	for _, s := range open {
		want[s.b]++
	}
	if got := load(); !maps.Equal(got, want) {
		t.Fatalf("BPF counts %v, open sockets %v", got, want)
	}
	for _, s := range open {
		unix.Close(s.fd)
	}
	open = nil
	waitFor(t, time.Second, "counts back to zero", func() bool {
		return maps.Equal(load(), map[Backend]uint32{bs[0]: 0, bs[1]: 0, bs[2]: 0})
	})
}

// Source hash on the socket path: an unbound socket's client is its network namespace, so
// every connection from one pod lands on one backend.
func TestSockSourceHashSticks(t *testing.T) {
	d := sockSetup(t)
	bs := loBackends(5)
	front := netip.AddrPortFrom(vip, 9000)
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 9000, Proto: UDP}, Algorithm: SourceHash}, bs...)
	fd, first := udpConnect(t, d, front, bs)
	unix.Close(fd)
	for range 100 {
		fd, b := udpConnect(t, d, front, bs)
		unix.Close(fd)
		if b != first {
			t.Fatalf("connection went to %s, first to %s", b, first)
		}
	}
}

// A pod's unbound socket and its packets are one client to session affinity: the socket path
// keys the pod's netns by the address netns_addrs gives it, which is what the packet path sees
// (a SYN that missed the socket hook, sent before the service was programmed).
func TestSockAffinityKeysPodByAddress(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	enterTestCgroup(t, d)
	bs := loBackends(5)
	front := netip.AddrPortFrom(vip, 9000)
	mustUpsert(t, d, Service{ServiceKey: ServiceKey{Addr: vip, Port: 9000, Proto: UDP}, AffinityTimeout: time.Hour}, bs...)

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		pod := netip.AddrFrom4([4]byte{10, 244, 0, byte(50 + i)})
		if err := d.SetPodNetns(map[uint64]netip.Addr{cookie: pod}); err != nil {
			t.Fatal(err)
		}
		_, out := run(t, d, "pod-in", ifindex, packet{src: netip.AddrPortFrom(pod, 7000), dst: front, proto: UDP})
		for range 10 {
			fd, b := udpConnect(t, d, front, bs)
			unix.Close(fd)
			if netip.AddrPortFrom(b.Addr, b.Port) != out.dst {
				t.Fatalf("pod %s: socket went to %s:%d, its packet to %s", pod, b.Addr, b.Port, out.dst)
			}
		}
	}
	if err := d.SetPodNetns(nil); err != nil {
		t.Fatal(err)
	}
	var k uint64
	var v uint32
	if it := d.sock.NetnsAddrs.Iterate(); it.Next(&k, &v) {
		t.Fatalf("netns_addrs still holds %d after an empty set", k)
	}
}
