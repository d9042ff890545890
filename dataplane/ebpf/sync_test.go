package ebpf

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/dataplane"
)

func spName(name, port string, proto v1.Protocol) dataplane.ServicePortName {
	return dataplane.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}, Port: port, Protocol: proto}
}

func target(s string, usable bool) dataplane.Target {
	a := netip.MustParseAddrPort(s)
	return dataplane.Target{Addr: a.Addr(), Port: a.Port(), Usable: usable}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// syncState is a State as the tracker would build it: a NodePort web service with
// externalTrafficPolicy Local, an external IP and a terminating backend; a source-hash UDP
// service with affinity; and frontends the eBPF backend must skip (IPv6, SCTP).
func syncState() *dataplane.State {
	return &dataplane.State{
		NodeName:  "node-a",
		NodeAddrs: addrs("192.168.1.10", "fd00::10"),
		Routes:    []dataplane.Route{{Node: "node-b", PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), NodeIP: netip.MustParseAddr("192.168.1.11")}},
		Services: []*dataplane.ServicePort{
			{
				Name: spName("dns", "dns", v1.ProtocolUDP), ClusterIPs: addrs("10.96.0.53", "fd00:96::53"),
				Port: 53, Protocol: v1.ProtocolUDP, Algorithm: dataplane.AlgorithmSourceHash,
				AffinityTimeout: 30 * time.Second,
				ClusterTargets:  []dataplane.Target{target("10.244.0.5:5353", true), target("10.244.1.5:5353", true)},
			},
			{
				Name: spName("sctp", "x", v1.ProtocolSCTP), ClusterIPs: addrs("10.96.0.99"), Port: 9, Protocol: v1.ProtocolSCTP,
				ClusterTargets: []dataplane.Target{target("10.244.0.9:9", true)},
			},
			{
				Name: spName("web", "http", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.10"), Port: 80, Protocol: v1.ProtocolTCP,
				NodePort: 30080, ExternalIPs: addrs("192.0.2.1"), ExternalPolicyLocal: true,
				Algorithm: dataplane.AlgorithmRoundRobin,
				ClusterTargets: []dataplane.Target{target("10.244.0.2:8080", true), target("10.244.1.2:8080", true),
					target("10.244.0.3:8080", false)},
				ExternalTargets: []dataplane.Target{target("10.244.0.2:8080", true), target("10.244.0.3:8080", false)},
			},
		},
	}
}

// dump renders the pinned maps the way `capstan dp services` reads them, one line per
// frontend: key algo flags id-free backend list.
func dump(t *testing.T, pinDir string) []string {
	t.Helper()
	p, err := OpenPinned(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	svcs, err := p.Services()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range svcs {
		line := fmt.Sprintf("%s %s local=%v affinity=%s:", s.ServiceKey, s.Algorithm, s.ExternalLocal, s.AffinityTimeout)
		for i, b := range s.Backends {
			mark := ""
			if i >= s.Active {
				mark = "(term)"
			}
			line += " " + b.Addr.String() + mark
		}
		out = append(out, line)
	}
	return out
}

func TestSyncWritesStateAndOnlyDifferences(t *testing.T) {
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	d := newTestDatapath(t, cfg)
	s := NewSyncer(d, nil)
	ctx := context.Background()

	if err := s.Sync(ctx, syncState()); err != nil {
		t.Fatal(err)
	}
	// NodePorts (no address) sort first; a Local frontend's internal entry, with every
	// endpoint, follows it.
	want := []string{
		"nodeport:30080/TCP round-robin local=true affinity=0s: 10.244.0.2:8080 10.244.0.3:8080(term)",
		"nodeport:30080/TCP/internal round-robin local=false affinity=0s: 10.244.0.2:8080 10.244.1.2:8080 10.244.0.3:8080(term)",
		"10.96.0.10:80/TCP round-robin local=false affinity=0s: 10.244.0.2:8080 10.244.1.2:8080 10.244.0.3:8080(term)",
		"10.96.0.53:53/UDP source-hash local=false affinity=30s: 10.244.0.5:5353 10.244.1.5:5353",
		"192.0.2.1:80/TCP round-robin local=true affinity=0s: 10.244.0.2:8080 10.244.0.3:8080(term)",
		"192.0.2.1:80/TCP/internal round-robin local=false affinity=0s: 10.244.0.2:8080 10.244.1.2:8080 10.244.0.3:8080(term)",
	}
	if got := dump(t, cfg.PinDir); !reflect.DeepEqual(got, want) {
		t.Fatalf("maps after first sync:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for m, want := range map[*ebpf.Map][]netip.Addr{d.sock.NodeAddrs: addrs("192.168.1.10"), d.sock.PeerNodes: addrs("192.168.1.11")} {
		var k, v uint32
		var got []netip.Addr
		for it := m.Iterate(); it.Next(&k, &v); {
			got = append(got, u32Addr(k))
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s holds %v, want %v", m, got, want)
		}
	}

	// The same State again writes nothing at all.
	before := d.MapWrites()
	if before == 0 {
		t.Fatal("write counter did not count the first sync")
	}
	if err := s.Sync(ctx, syncState()); err != nil {
		t.Fatal(err)
	}
	if n := d.MapWrites() - before; n != 0 {
		t.Fatalf("identical sync wrote %d times", n)
	}

	// A change writes, and only for what changed: the dns service goes, web loses a backend.
	st := syncState()
	st.Services = []*dataplane.ServicePort{st.Services[2]}
	web := *st.Services[0]
	web.ClusterTargets = web.ClusterTargets[:1]
	st.Services[0] = &web
	before = d.MapWrites()
	if err := s.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"nodeport:30080/TCP round-robin local=true affinity=0s: 10.244.0.2:8080 10.244.0.3:8080(term)",
		"nodeport:30080/TCP/internal round-robin local=false affinity=0s: 10.244.0.2:8080",
		"10.96.0.10:80/TCP round-robin local=false affinity=0s: 10.244.0.2:8080",
		"192.0.2.1:80/TCP round-robin local=true affinity=0s: 10.244.0.2:8080 10.244.0.3:8080(term)",
		"192.0.2.1:80/TCP/internal round-robin local=false affinity=0s: 10.244.0.2:8080",
	}
	if got := dump(t, cfg.PinDir); !reflect.DeepEqual(got, want) {
		t.Fatalf("maps after change:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// dns: service entry, 2 slots, maglev table, 2 backends; web ClusterIP: entry, 2 slots,
	// 1 backend; the two internal entries of web's Local frontends: entry, 2 slots each.
	// Anything above that rewrote what did not change.
	if n := d.MapWrites() - before; n == 0 || n > 20 {
		t.Fatalf("change wrote %d times, want 1-20", n)
	}
	p, err := OpenPinned(cfg.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	bes, err := p.Backends()
	if err != nil {
		t.Fatal(err)
	}
	if len(bes) != 2 {
		t.Fatalf("backends left %v, want the two web still uses", bes)
	}
	before = d.MapWrites()
	if err := s.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if n := d.MapWrites() - before; n != 0 {
		t.Fatalf("identical sync after a change wrote %d times", n)
	}

	// An empty State empties the maps.
	if err := s.Sync(ctx, &dataplane.State{}); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, cfg.PinDir); len(got) != 0 {
		t.Fatalf("maps not empty after syncing an empty state: %v", got)
	}
	if bes, _ := p.Backends(); len(bes) != 0 {
		t.Fatalf("backends left: %v", bes)
	}
}

func TestSyncAfterRestartKeepsIDs(t *testing.T) {
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	d := newTestDatapath(t, cfg)
	ctx := context.Background()
	if err := NewSyncer(d, nil).Sync(ctx, syncState()); err != nil {
		t.Fatal(err)
	}
	ids := func(d *Datapath) map[ServiceKey]uint32 {
		m := make(map[ServiceKey]uint32)
		for k, st := range d.services {
			m[k] = st.id
		}
		return m
	}
	before := ids(d)
	d.Close()

	d2 := newTestDatapath(t, cfg)
	s2 := NewSyncer(d2, nil)
	if err := s2.Sync(ctx, syncState()); err != nil {
		t.Fatal(err)
	}
	// Conntrack entries name service and backend IDs: a restart must keep them.
	if after := ids(d2); !reflect.DeepEqual(before, after) {
		t.Fatalf("service IDs changed across a restart: %v -> %v", before, after)
	}
	w := d2.MapWrites()
	if err := s2.Sync(ctx, syncState()); err != nil {
		t.Fatal(err)
	}
	if n := d2.MapWrites() - w; n != 0 {
		t.Fatalf("second sync after restart wrote %d times", n)
	}
}

func TestSyncConflictsAndBadServices(t *testing.T) {
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	d := newTestDatapath(t, cfg)
	st := &dataplane.State{Services: []*dataplane.ServicePort{
		{
			Name: spName("a", "", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.1"), Port: 80, Protocol: v1.ProtocolTCP,
			ExternalIPs: addrs("192.0.2.1"), ClusterTargets: []dataplane.Target{target("10.244.0.1:80", true)},
			ExternalTargets: []dataplane.Target{target("10.244.0.1:80", true)},
		},
		{
			Name: spName("b", "", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.2"), Port: 80, Protocol: v1.ProtocolTCP,
			ExternalIPs: addrs("192.0.2.1"), ClusterTargets: []dataplane.Target{target("10.244.0.2:80", true)},
			ExternalTargets: []dataplane.Target{target("10.244.0.2:80", true)},
		},
		{
			// Bad: a backend port 0 cannot be programmed.
			Name: spName("c", "", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.3"), Port: 80, Protocol: v1.ProtocolTCP,
			ClusterTargets: []dataplane.Target{target("10.244.0.3:0", true)},
		},
	}}
	err := NewSyncer(d, nil).Sync(context.Background(), st)
	if err == nil || !strings.Contains(err.Error(), "default/c") {
		t.Fatalf("sync error %v, want one naming default/c", err)
	}
	want := []string{
		"10.96.0.1:80/TCP random local=false affinity=0s: 10.244.0.1:80",
		"10.96.0.2:80/TCP random local=false affinity=0s: 10.244.0.2:80",
		// The shared external IP goes to the first service by name.
		"192.0.2.1:80/TCP random local=false affinity=0s: 10.244.0.1:80",
	}
	if got := dump(t, cfg.PinDir); !reflect.DeepEqual(got, want) {
		t.Fatalf("maps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A backend selectable in one service and terminating in another stays selectable, and
// syncing that again writes nothing (the flag must not follow the last upsert).
func TestSharedBackendFlagIsStable(t *testing.T) {
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	d := newTestDatapath(t, cfg)
	shared := "10.244.0.3:8080"
	st := &dataplane.State{Services: []*dataplane.ServicePort{{
		Name: spName("web", "http", v1.ProtocolTCP), ClusterIPs: addrs("10.96.0.10"), Port: 80, Protocol: v1.ProtocolTCP,
		NodePort: 30080, ExternalPolicyLocal: true,
		ClusterTargets:  []dataplane.Target{target("10.244.1.2:8080", true), target(shared, false)},
		ExternalTargets: []dataplane.Target{target(shared, true)},
	}}}
	s := NewSyncer(d, nil)
	ctx := context.Background()
	terminating := func() bool {
		p, err := OpenPinned(cfg.PinDir)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		bes, err := p.Backends()
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bes {
			if b.Addr.String() == shared {
				return b.Terminating
			}
		}
		t.Fatalf("backend %s missing: %v", shared, bes)
		return false
	}
	for i := range 3 {
		before := d.MapWrites()
		if err := s.Sync(ctx, st); err != nil {
			t.Fatal(err)
		}
		if i > 0 && d.MapWrites() != before {
			t.Fatalf("sync %d wrote %d times", i, d.MapWrites()-before)
		}
		if terminating() {
			t.Fatalf("sync %d: backend selectable by the NodePort is flagged terminating", i)
		}
	}
	// Once nothing selects it, it is terminating.
	st.Services[0].NodePort = 0
	if err := s.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if !terminating() {
		t.Fatal("backend no service selects is not flagged terminating")
	}
}

// Conntrack shows a flow the tc programs translated, both directions.
func TestPinnedConntrack(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	d := newTestDatapath(t, cfg)
	svc := Service{ServiceKey: ServiceKey{Addr: vip, Port: 80, Proto: TCP}}
	mustUpsert(t, d, svc, be1)
	req := packet{src: netip.AddrPortFrom(clientIP, 40000), dst: netip.AddrPortFrom(vip, 80), proto: TCP, tcpFlags: tcpSYN}
	if ret, _ := run(t, d, "pod-in", ifindex, req); ret != tcActOK {
		t.Fatalf("verdict %d", ret)
	}
	p, err := OpenPinned(cfg.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ents, err := p.Conntrack(0)
	if err != nil {
		t.Fatal(err)
	}
	var fwd *ConnEntry
	for i, e := range ents {
		if !e.Reply {
			fwd = &ents[i]
		}
	}
	if len(ents) != 2 || fwd == nil {
		t.Fatalf("conntrack %+v, want a forward and a reply entry", ents)
	}
	if fwd.Src != req.src || fwd.Dst != req.dst || fwd.NewDst != netip.AddrPortFrom(be1.Addr, be1.Port) ||
		fwd.ExpiresIn <= 0 || fwd.Proto != TCP {
		t.Fatalf("forward entry %+v", *fwd)
	}
	stats, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, s := range stats {
		got[s.Name] = s.Entries
	}
	if got["ct4"] != 2 || got["services"] != 1 || got["backends"] != 1 || got["backend_conns"] != -1 {
		t.Fatalf("stats %v", got)
	}
}
