package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"k8s.io/apimachinery/pkg/types"
)

// policyNamesMap is created from Go, not from bpf/: only userspace reads it. It maps a policy
// ID (counters, rule values) to "namespace/name", so inspection tools can name policies
// without asking the daemon.
const (
	policyNamesMap  = "policy_names"
	policyNameBytes = 256
)

func openPolicyNames(pinDir string, entries int) (*ebpf.Map, error) {
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name:       policyNamesMap,
		Type:       ebpf.Hash,
		KeySize:    4,
		ValueSize:  policyNameBytes,
		MaxEntries: uint32(entries),
		Pinning:    ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: pinDir})
	if err != nil {
		return nil, fmt.Errorf("open %s map: %w", policyNamesMap, err)
	}
	return m, nil
}

func putPolicyName(m *ebpf.Map, id uint32, n types.NamespacedName) error {
	var v [policyNameBytes]byte
	copy(v[:], n.String())
	return m.Put(id, v)
}

// PolicyVerdicts are the policy programs' counters for one direction.
type PolicyVerdicts struct {
	// AllowedFlows are new flows an isolated pod's rules admitted; OpenFlows new flows at a
	// pod no policy isolates. Denied counts dropped packets; Replies packets the rules would
	// deny that passed as replies of allowed flows.
	AllowedFlows, OpenFlows, Denied, Replies uint64
}

// PolicyCounters returns the verdict counters by direction ("ingress", "egress") and the new
// flows each policy admitted, by direction.
func (d *Datapath) PolicyCounters() (map[string]PolicyVerdicts, map[types.NamespacedName][2]uint64, error) {
	verdicts, err := readPolicyVerdicts(d.sock.PolicyStats)
	if err != nil {
		return nil, nil, err
	}
	byPolicy := make(map[types.NamespacedName][2]uint64)
	for id, n := range d.PolicyIDs() {
		var c [2]uint64
		for dir := range uint32(2) {
			var per []uint64
			if err := d.sock.PolicyCounts.Lookup(id*2+dir, &per); err != nil {
				return nil, nil, fmt.Errorf("read policy counter: %w", err)
			}
			for _, v := range per {
				c[dir] += v
			}
		}
		byPolicy[n] = c
	}
	return verdicts, byPolicy, nil
}

func readPolicyVerdicts(m *ebpf.Map) (map[string]PolicyVerdicts, error) {
	out := make(map[string]PolicyVerdicts, 2)
	for dir, name := range []string{"ingress", "egress"} {
		var v [4]uint64
		for i := range v {
			var per []uint64
			if err := m.Lookup(uint32(dir*4+i), &per); err != nil {
				return nil, fmt.Errorf("read policy stats: %w", err)
			}
			for _, n := range per {
				v[i] += n
			}
		}
		out[name] = PolicyVerdicts{AllowedFlows: v[0], Denied: v[1], Replies: v[2], OpenFlows: v[3]}
	}
	return out, nil
}

// PolicyPortRange is an allowed protocol and port range.
type PolicyPortRange struct {
	Protocol    Protocol
	First, Last uint16
	Policy      string
}

func (r PolicyPortRange) String() string {
	if r.First == r.Last {
		return fmt.Sprintf("%s/%d", r.Protocol, r.First)
	}
	if r.First == 0 && r.Last == 65535 {
		return fmt.Sprintf("%s/any", r.Protocol)
	}
	return fmt.Sprintf("%s/%d-%d", r.Protocol, r.First, r.Last)
}

// PolicyRule is one peer prefix of a pod's rules, as the maps hold it.
type PolicyRule struct {
	Peer netip.Prefix
	// AnyPort: every protocol and port (Policy names a policy granting it); Deny: a hole
	// carved by an ipBlock except; otherwise Ports.
	AnyPort, Deny bool
	Policy        string
	Ports         []PolicyPortRange
}

// PodPolicy is what the maps enforce for one pod address.
type PodPolicy struct {
	Addr netip.Addr
	// IngressIsolated / EgressIsolated: some policy selects the pod for that direction, so
	// only the Rules of that direction are admitted (and replies, and its node for ingress).
	IngressIsolated, EgressIsolated bool
	Ingress, Egress                 []PolicyRule
}

// PolicyFor reads the rules in force for the pod with address addr.
func (p *Pinned) PolicyFor(addr netip.Addr) (*PodPolicy, error) {
	if !addr.Is4() {
		return nil, fmt.Errorf("%s is not an IPv4 address", addr)
	}
	out := &PodPolicy{Addr: addr}
	var ep sockPolEp
	err := p.maps[sockMapPolicyEps].Lookup(addrU32(addr), &ep)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read policy_eps: %w", err)
	}
	out.IngressIsolated = ep.Flags&(1<<polDirIngress) != 0
	out.EgressIsolated = ep.Flags&(1<<polDirEgress) != 0

	names := p.policyNames()
	ports, err := p.portSets(names)
	if err != nil {
		return nil, err
	}
	var (
		k sockPolKey
		v sockPolVal
	)
	it := p.maps[sockMapPolicyRules].Iterate()
	for it.Next(&k, &v) {
		if k.Ep != addrU32(addr) {
			continue
		}
		r := PolicyRule{Peer: netip.PrefixFrom(u32Addr(k.Peer), int(k.Prefixlen)-64)}
		switch v.PortsId {
		case 0:
			r.AnyPort, r.Policy = true, names[v.PolicyId]
		case polPortsDeny:
			r.Deny = true
		default:
			r.Ports = ports[v.PortsId]
		}
		if k.Dir == polDirIngress {
			out.Ingress = append(out.Ingress, r)
		} else {
			out.Egress = append(out.Egress, r)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read policy_rules: %w", err)
	}
	for _, rs := range [][]PolicyRule{out.Ingress, out.Egress} {
		slices.SortFunc(rs, func(a, b PolicyRule) int {
			if c := a.Peer.Addr().Compare(b.Peer.Addr()); c != 0 {
				return c
			}
			return a.Peer.Bits() - b.Peer.Bits()
		})
	}
	return out, nil
}

func (p *Pinned) policyNames() map[uint32]string {
	out := make(map[uint32]string)
	m, err := ebpf.LoadPinnedMap(filepath.Join(p.dir, policyNamesMap), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return out // named by ID instead
	}
	defer m.Close()
	var (
		id uint32
		v  [policyNameBytes]byte
	)
	for it := m.Iterate(); it.Next(&id, &v); {
		out[id] = strings.TrimRight(string(v[:]), "\x00")
	}
	return out
}

// portSets rebuilds each port set's ranges from its LPM blocks, merging adjacent blocks.
func (p *Pinned) portSets(names map[uint32]string) (map[uint32][]PolicyPortRange, error) {
	var (
		k   sockPolPortKey
		pid uint32
	)
	sets := make(map[uint32][]PolicyPortRange)
	it := p.maps[sockMapPolicyPorts].Iterate()
	for it.Next(&k, &pid) {
		first := portHost(k.Port)
		size := uint32(1) << (16 - (k.Prefixlen - 48))
		sets[k.PortsId] = append(sets[k.PortsId], PolicyPortRange{Protocol: Protocol(k.Proto), First: first,
			Last: uint16(uint32(first) + size - 1), Policy: names[pid]})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read policy_ports: %w", err)
	}
	for id, rs := range sets {
		slices.SortFunc(rs, func(a, b PolicyPortRange) int {
			if a.Protocol != b.Protocol {
				return int(a.Protocol) - int(b.Protocol)
			}
			return int(a.First) - int(b.First)
		})
		var merged []PolicyPortRange
		for _, r := range rs {
			if n := len(merged); n > 0 && merged[n-1].Protocol == r.Protocol && merged[n-1].Policy == r.Policy &&
				uint32(merged[n-1].Last)+1 == uint32(r.First) {
				merged[n-1].Last = r.Last
				continue
			}
			merged = append(merged, r)
		}
		sets[id] = merged
	}
	return sets, nil
}

// PolicyDrop is a packet the policy programs dropped.
type PolicyDrop struct {
	// Time is the kernel's monotonic clock at the drop.
	Time     time.Duration
	Src, Dst netip.AddrPort
	Proto    Protocol
	Ingress  bool
	Reason   string
	Ifindex  uint32
}

func (e PolicyDrop) String() string {
	dir := "egress"
	if e.Ingress {
		dir = "ingress"
	}
	return fmt.Sprintf("DROP %s %s %s -> %s: %s", dir, e.Proto, e.Src, e.Dst, e.Reason)
}

var dropReasons = map[uint8]string{
	1: "no rule admits the peer",
	2: "peer admitted, not on this port",
	3: "peer in an ipBlock except",
}

// PolicyMonitor reads the drop events of one node's policy programs. Only one reader gets
// each event.
type PolicyMonitor struct {
	m *ebpf.Map
	r *ringbuf.Reader
}

// OpenPolicyMonitor opens the drop-event ring buffer pinned under pinDir.
func OpenPolicyMonitor(pinDir string) (*PolicyMonitor, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, sockMapPolicyEvents), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no policy events map under %s: is the dataplane running there?", pinDir)
		}
		return nil, fmt.Errorf("open policy events: %w", err)
	}
	r, err := ringbuf.NewReader(m)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("read policy events: %w", err)
	}
	return &PolicyMonitor{m: m, r: r}, nil
}

// SetDeadline makes Read give up at t with os.ErrDeadlineExceeded.
func (pm *PolicyMonitor) SetDeadline(t time.Time) { pm.r.SetDeadline(t) }

// Read blocks for the next drop.
func (pm *PolicyMonitor) Read() (PolicyDrop, error) {
	rec, err := pm.r.Read()
	if err != nil {
		return PolicyDrop{}, err
	}
	b := rec.RawSample
	if len(b) < 32 {
		return PolicyDrop{}, fmt.Errorf("short policy event (%d bytes)", len(b))
	}
	ne := binary.NativeEndian
	ev := PolicyDrop{
		Time:    time.Duration(ne.Uint64(b[0:8])),
		Src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[8:12])), binary.BigEndian.Uint16(b[16:18])),
		Dst:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), binary.BigEndian.Uint16(b[18:20])),
		Proto:   Protocol(b[20]),
		Ingress: b[21] == polDirIngress,
		Reason:  dropReasons[b[22]],
		Ifindex: ne.Uint32(b[24:28]),
	}
	if ev.Reason == "" {
		ev.Reason = fmt.Sprintf("reason %d", b[22])
	}
	return ev, nil
}

// Close stops a blocked Read and releases the ring buffer.
func (pm *PolicyMonitor) Close() error {
	return errors.Join(pm.r.Close(), pm.m.Close())
}
