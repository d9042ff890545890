package ebpf

import (
	"encoding/binary"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

const syntheticClients = 10000

// clientAddr is synthetic client i: distinct addresses spread over 10.200.0.0/16 and beyond.
func clientAddr(i int) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], 0x0ac80000+uint32(i)*7919%0x00ffffff)
	return netip.AddrFrom4(b)
}

func manyBackends(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Addr: netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 10}), Port: 8080}
	}
	return bs
}

// openFlow sends the first packet of a new flow from client through the pod ingress program
// and returns the backend it was given.
func openFlow(t testing.TB, d *Datapath, ifindex int, client netip.AddrPort, svc ServiceKey) netip.AddrPort {
	t.Helper()
	ret, out := run(t, d, "pod-in", ifindex, packet{src: client, dst: netip.AddrPortFrom(svc.Addr, svc.Port),
		proto: svc.Proto, tcpFlags: tcpSYN})
	if ret != tcActOK {
		t.Fatalf("verdict %d for a new flow", ret)
	}
	return out.dst
}

func TestRandomIsEven(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	svc := Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}, Algorithm: Random}
	// Two backends: at 10,000 draws 5% of even is five standard deviations, so the check
	// cannot flake while still catching any real skew.
	bs := manyBackends(2)
	mustUpsert(t, d, svc, bs...)

	counts := map[netip.AddrPort]int{}
	for i := range syntheticClients {
		counts[openFlow(t, d, ifindex, netip.AddrPortFrom(clientAddr(i), 1000), svc.ServiceKey)]++
	}
	even := float64(syntheticClients) / float64(len(bs))
	for _, b := range bs {
		n := counts[netip.AddrPortFrom(b.Addr, b.Port)]
		if dev := (float64(n) - even) / even; dev > 0.05 || dev < -0.05 {
			t.Errorf("%s got %d of %d, %.1f%% off even", b, n, syntheticClients, 100*dev)
		}
	}
}

func TestRoundRobinIsExact(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	svc := Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}, Algorithm: RoundRobin}
	bs := manyBackends(4)
	mustUpsert(t, d, svc, bs...)

	counts := map[netip.AddrPort]int{}
	var prev netip.AddrPort
	for i := range syntheticClients {
		got := openFlow(t, d, ifindex, netip.AddrPortFrom(clientAddr(i), 1000), svc.ServiceKey)
		if got == prev {
			t.Fatalf("flow %d got %s twice in a row", i, got)
		}
		prev = got
		counts[got]++
	}
	for _, b := range bs {
		if n := counts[netip.AddrPortFrom(b.Addr, b.Port)]; n != syntheticClients/len(bs) {
			t.Errorf("%s got %d, want exactly %d", b, n, syntheticClients/len(bs))
		}
	}
}

func TestSourceHashStableAndMinimalMove(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	d := newTestDatapath(t, cfg)
	svc := Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}, Algorithm: SourceHash}
	const n = 5
	bs := manyBackends(n)
	mustUpsert(t, d, svc, bs...)

	// The Go side can tell where each client must land: BPF and Go agree on the hash.
	names := make([]string, n)
	for i, b := range bs {
		names[i] = b.String()
	}
	m := MaglevTableSize(n)
	table := Maglev(names, m, cfg.MaglevSeed)

	first := make([]netip.AddrPort, syntheticClients)
	for i := range syntheticClients {
		c := clientAddr(i)
		got := openFlow(t, d, ifindex, netip.AddrPortFrom(c, 1000), svc.ServiceKey)
		h := ClientHash(uint64(binary.BigEndian.Uint32(c.AsSlice())), cfg.MaglevSeed)
		if want := bs[table[h%uint32(m)]]; got != netip.AddrPortFrom(want.Addr, want.Port) {
			t.Fatalf("client %s went to %s, Go's table says %s", c, got, want)
		}
		first[i] = got
	}
	// Stable: a client's next connection, from another port, goes to the same backend.
	for i := range syntheticClients {
		if got := openFlow(t, d, ifindex, netip.AddrPortFrom(clientAddr(i), 2000), svc.ServiceKey); got != first[i] {
			t.Fatalf("client %s moved from %s to %s", clientAddr(i), first[i], got)
		}
	}

	// Remove one backend: only about its own share of clients may move.
	removed := bs[2]
	mustUpsert(t, d, svc, slices.Delete(slices.Clone(bs), 2, 3)...)
	moved := 0
	for i := range syntheticClients {
		got := openFlow(t, d, ifindex, netip.AddrPortFrom(clientAddr(i), 3000), svc.ServiceKey)
		if got.Addr() == removed.Addr {
			t.Fatalf("client %s sent to removed backend", clientAddr(i))
		}
		if got != first[i] {
			moved++
		}
	}
	frac := float64(moved) / syntheticClients
	if limit := 1.0/n + 0.02; frac > limit {
		t.Errorf("%.3f of clients moved, limit %.3f", frac, limit)
	}
	t.Logf("removing 1 of %d backends moved %.2f%% of clients", n, 100*frac)
}

func TestLeastConnPicksLeastLoaded(t *testing.T) {
	ifindex := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	svc := Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}, Algorithm: LeastConn}
	bs := manyBackends(4)
	mustUpsert(t, d, svc, bs...)

	rng := rand.New(rand.NewPCG(1, 2))
	type flow struct{ client, backend netip.AddrPort }
	var open []flow
	loads := func() map[netip.AddrPort]uint32 {
		m := map[netip.AddrPort]uint32{}
		for _, b := range bs {
			m[netip.AddrPortFrom(b.Addr, b.Port)] = conns(t, d, b, TCP)
		}
		return m
	}
	for i := range syntheticClients {
		// Mostly opens, some closes (RST from either side), so loads go up and down.
		if len(open) > 0 && rng.IntN(10) < 4 {
			j := rng.IntN(len(open))
			f := open[j]
			open = slices.Delete(open, j, j+1)
			if rng.IntN(2) == 0 {
				run(t, d, "pod-in", ifindex, packet{src: f.client, dst: netip.AddrPortFrom(vip, 80), proto: TCP, tcpFlags: tcpRST})
			} else {
				run(t, d, "pod-out", ifindex, packet{src: f.backend, dst: f.client, proto: TCP, tcpFlags: tcpRST})
			}
			continue
		}
		before := loads()
		least := slices.Min(slices.Collect(maps.Values(before)))
		c := netip.AddrPortFrom(clientAddr(i), 1000)
		got := openFlow(t, d, ifindex, c, svc.ServiceKey)
		if before[got] != least {
			t.Fatalf("flow %d went to %s with %d connections; least loaded had %d (%v)", i, got, before[got], least, before)
		}
		open = append(open, flow{c, got})
	}
	// The counts are exactly the open flows.
	want := map[netip.AddrPort]uint32{}
	for _, f := range open {
		want[f.backend]++
	}
	for b, n := range loads() {
		if n != want[b] {
			t.Errorf("%s: BPF counts %d connections, %d are open", b, n, want[b])
		}
	}
}
