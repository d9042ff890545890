package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Pinned is a read-only view of a node's pinned maps, for inspection tools (`capstan dp`)
// that must not disturb a running daemon.
type Pinned struct {
	dir  string
	maps map[string]*ebpf.Map
}

// pinnedNames are the maps Pinned opens, in the order Stats reports them.
func pinnedNames() []string {
	return []string{
		sockMapServices, sockMapSvcSlots, sockMapBackends, sockMapBackendConns, sockMapRrState,
		sockMapMaglevTables, sockMapCt4, sockMapAffinity4, sockMapNodeAddrs, sockMapPeerNodes, sockMapSockRevnat4,
		sockMapSockBackend, sockMapEndpoints, sockMapTunnelRoutes, sockMapStats,
		sockMapPolicyEps, sockMapPolicyHosts, sockMapPolicyRules, sockMapPolicyPorts, sockMapPolicyCt4, sockMapPolicyStats,
	}
}

// OpenPinned opens the maps pinned under pinDir read-only.
func OpenPinned(pinDir string) (_ *Pinned, err error) {
	p := &Pinned{dir: pinDir, maps: make(map[string]*ebpf.Map)}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if _, err := os.Stat(pinDir); err != nil {
		return nil, fmt.Errorf("no dataplane maps in %s: is the dataplane running there? (%w)", pinDir, err)
	}
	for _, name := range pinnedNames() {
		path := filepath.Join(pinDir, name)
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		p.maps[name] = m
	}
	return p, nil
}

// Close releases the map handles; the pinned maps are not touched.
func (p *Pinned) Close() error {
	var errs []error
	for _, m := range p.maps {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

// BackendEntry is a backends map entry with its live connection count.
type BackendEntry struct {
	ID          uint32
	Addr        netip.AddrPort
	Proto       Protocol
	Terminating bool
	Conns       uint32
}

// ServiceEntry is a services map entry with its backends in slot order.
type ServiceEntry struct {
	Service
	ID uint32
	// Backends are the selectable slots, then the terminating ones.
	Backends []BackendEntry
	Active   int
}

// Backends lists the backends map, sorted by ID.
func (p *Pinned) Backends() ([]BackendEntry, error) {
	var (
		id  uint32
		bv  backendVal
		out []BackendEntry
	)
	it := p.maps[sockMapBackends].Iterate()
	for it.Next(&id, &bv) {
		out = append(out, p.backendEntry(id, bv))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read backends: %w", err)
	}
	slices.SortFunc(out, func(a, b BackendEntry) int { return int(a.ID) - int(b.ID) })
	return out, nil
}

func (p *Pinned) backendEntry(id uint32, bv backendVal) BackendEntry {
	e := BackendEntry{
		ID:          id,
		Addr:        netip.AddrPortFrom(u32Addr(bv.Addr), portHost(bv.Port)),
		Proto:       Protocol(bv.Proto),
		Terminating: bv.Flags&beFlagTerm != 0,
	}
	// A missing count reads as zero; it is informational.
	_ = p.maps[sockMapBackendConns].Lookup(id, &e.Conns)
	return e
}

// Services lists the services map with each service's backends, sorted by frontend.
func (p *Pinned) Services() ([]ServiceEntry, error) {
	var (
		sk  svcKey
		sv  svcVal
		out []ServiceEntry
	)
	it := p.maps[sockMapServices].Iterate()
	for it.Next(&sk, &sv) {
		key := serviceKey(sk)
		e := ServiceEntry{
			Service: Service{
				ServiceKey:      key,
				Algorithm:       Algorithm(sv.Algo),
				ExternalLocal:   sv.Flags&svcFlagLocal != 0,
				AffinityTimeout: time.Duration(sv.AffinityTimeout) * time.Second,
			},
			ID:     sv.Id,
			Active: int(sv.Count),
		}
		for i := range uint32(sv.Members) {
			var bid uint32
			if err := p.maps[sockMapSvcSlots].Lookup(slotKey{SvcId: sv.Id, Slot: i}, &bid); err != nil {
				return nil, fmt.Errorf("service %s slot %d: %w", key, i, err)
			}
			var bv backendVal
			if err := p.maps[sockMapBackends].Lookup(bid, &bv); err != nil {
				return nil, fmt.Errorf("service %s backend %d: %w", key, bid, err)
			}
			e.Backends = append(e.Backends, p.backendEntry(bid, bv))
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}
	slices.SortFunc(out, func(a, b ServiceEntry) int { return compareKeys(a.ServiceKey, b.ServiceKey) })
	return out, nil
}

// ConnEntry is one conntrack entry.
type ConnEntry struct {
	Reply    bool
	Src, Dst netip.AddrPort
	Proto    Protocol
	// NewSrc and NewDst are the rewritten addresses, invalid when not rewritten.
	NewSrc, NewDst netip.AddrPort
	BackendID      uint32
	ServiceID      uint32
	Closing        bool
	// Masquerade marks a pod's flow to the outside, SNATed to the node.
	Masquerade bool
	// ExpiresIn is the idle time left.
	ExpiresIn time.Duration
}

// Conntrack lists up to limit conntrack entries (all when limit <= 0), in map order.
func (p *Pinned) Conntrack(limit int) ([]ConnEntry, error) {
	var ts unix.Timespec
	// BPF stamps entries with bpf_ktime_get_ns, the monotonic clock.
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("read monotonic clock: %w", err)
	}
	now := uint64(ts.Nano())
	var (
		k   sockCtKey
		v   sockCtEntry
		out []ConnEntry
	)
	it := p.maps[sockMapCt4].Iterate()
	for it.Next(&k, &v) {
		e := ConnEntry{
			Reply:      k.Dir == 1,
			Src:        netip.AddrPortFrom(u32Addr(k.Saddr), portHost(k.Sport)),
			Dst:        netip.AddrPortFrom(u32Addr(k.Daddr), portHost(k.Dport)),
			Proto:      Protocol(k.Proto),
			BackendID:  v.BackendId,
			ServiceID:  v.SvcId,
			Closing:    v.Flags&ctFlagClosing != 0,
			Masquerade: v.Flags&ctFlagMasq != 0,
		}
		if v.Flags&ctFlagRewriteSrc != 0 {
			e.NewSrc = netip.AddrPortFrom(u32Addr(v.SrcAddr), portHost(v.SrcPort))
		}
		if v.Flags&ctFlagRewriteDst != 0 {
			e.NewDst = netip.AddrPortFrom(u32Addr(v.DstAddr), portHost(v.DstPort))
		}
		if v.Expires > now {
			e.ExpiresIn = time.Duration(v.Expires - now)
		}
		out = append(out, e)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read conntrack: %w", err)
	}
	return out, nil
}

// Conntrack flag bits from bpf/lib/maps.h.
const (
	ctFlagRewriteSrc = 1 << 0
	ctFlagRewriteDst = 1 << 1
	ctFlagClosing    = 1 << 3
	ctFlagMasq       = 1 << 4
)

// MapStat is a map's fill.
type MapStat struct {
	Name       string
	Type       ebpf.MapType
	Entries    int // -1 for arrays, which are always full
	MaxEntries uint32
}

// Stats counts the entries of every map.
func (p *Pinned) Stats() ([]MapStat, error) {
	var out []MapStat
	for _, name := range pinnedNames() {
		m := p.maps[name]
		st := MapStat{Name: name, Type: m.Type(), MaxEntries: m.MaxEntries(), Entries: -1}
		if m.Type() != ebpf.Array && m.Type() != ebpf.PerCPUArray {
			n, err := countKeys(m)
			if err != nil {
				return nil, fmt.Errorf("count %s: %w", name, err)
			}
			st.Entries = n
		}
		out = append(out, st)
	}
	return out, nil
}

// Endpoints lists the endpoints map (pods of this node), sorted by IP.
func (p *Pinned) Endpoints() ([]Endpoint, error) {
	return readEndpoints(p.maps[sockMapEndpoints])
}

// TunnelRoutes returns the tunnel routes map: podCIDR -> node address.
func (p *Pinned) TunnelRoutes() (map[netip.Prefix]netip.Addr, error) {
	return readTunnelRoutes(p.maps[sockMapTunnelRoutes])
}

// Counters returns the programs' packet counters by reason, as Datapath.Counters does.
func (p *Pinned) Counters() (map[string]uint64, error) {
	return readCounters(p.maps[sockMapStats])
}

// countKeys walks keys only, so it works for every map type, maps of maps included.
func countKeys(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var prev any // nil asks for the first key
	n := 0
	for {
		err := m.NextKey(prev, next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		copy(key, next)
		prev = key
	}
}
