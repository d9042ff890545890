package ebpf

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/dataplane/policy"
)

// Map sizes for NetworkPolicy when Config leaves them zero.
const (
	DefaultPolicyEndpoints = 4096    // isolated local pods
	DefaultPolicyRules     = 1 << 16 // (pod, direction, peer prefix) entries
	DefaultPolicyPorts     = 1 << 16 // (port set, protocol, port prefix) entries
	DefaultPolicyIDs       = 1 << 14 // policies with counters
)

// ErrPolicyMapFull is wrapped by the errors of a policy sync that did not fit a map.
var ErrPolicyMapFull = errors.New("policy map full")

const (
	polDirIngress = 0
	polDirEgress  = 1

	polPortsDeny = 0xffffffff
	pctFReply    = 1
)

// PolicyProblem is a part of the policy state the maps could not take: the pod it concerns
// and the policies that isolate it, so the caller can put an event on them.
type PolicyProblem struct {
	Pod      types.NamespacedName
	Policies []types.NamespacedName
	Err      error
}

// policyMaps is what the maps hold, as last written, so a sync writes only the difference.
type policyMaps struct {
	loaded bool
	eps    map[uint32]sockPolEp
	rules  map[sockPolKey]sockPolVal
	ports  map[sockPolPortKey]uint32
	// setIDs gives each distinct port set (its canonical string) its ports_id.
	setIDs map[string]uint32
	// policyIDs numbers policies for the per-policy counters.
	policyIDs map[types.NamespacedName]uint32
}

// SyncPolicy makes the policy maps hold st: which local pods are isolated in which direction,
// and for each the peers and ports admitted. Entries that do not fit are reported as problems
// (wrapping ErrPolicyMapFull) and the rest is still written; the error is for map failures.
func (d *Datapath) SyncPolicy(st *policy.State) ([]PolicyProblem, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pm := &d.pol
	if !pm.loaded {
		if err := d.loadPolicyMaps(); err != nil {
			return nil, err
		}
	}
	// Any change makes the verdicts flows cached stale: the next packet of each is judged
	// again, so a connection the new rules deny is cut. Also on the way out after an error,
	// since part of the change may be in.
	before := d.writes.Load()
	defer func() {
		if d.writes.Load() != before {
			if err := d.bumpPolicyRev(); err != nil {
				d.log.Error("bump policy revision: verdicts cached by flows stay in force", "err", err)
			}
		}
	}()

	// Desired contents. Port sets keep their IDs across syncs; new ones get IDs no entry in
	// the map uses yet, so a rule never points at a set while it is rewritten.
	wantEps := make(map[uint32]sockPolEp)
	wantRules := make(map[sockPolKey]sockPolVal)
	wantPorts := make(map[sockPolPortKey]uint32)
	usedSets := make(map[string]uint32)
	ids := d.newSetIDs()
	usedPolicies := make(map[types.NamespacedName]uint32)
	owner := make(map[sockPolKey]int) // rule -> index in st.Endpoints, for problems
	var problems []PolicyProblem

	policyID := func(n types.NamespacedName) (uint32, error) {
		if id, ok := usedPolicies[n]; ok {
			return id, nil
		}
		id, ok := pm.policyIDs[n]
		if !ok {
			var err error
			if id, err = d.newPolicyID(); err != nil {
				return 0, err
			}
			pm.policyIDs[n] = id
			if err := putPolicyName(d.polNames, id, n); err != nil {
				return 0, fmt.Errorf("name policy %d: %w", id, err)
			}
		}
		usedPolicies[n] = id
		return id, nil
	}

	for i, ep := range st.Endpoints {
		if !ep.Addr.Is4() {
			continue
		}
		var flags uint32
		for dir, r := range []*policy.Rules{ep.Ingress, ep.Egress} {
			if r == nil {
				continue
			}
			flags |= 1 << dir
			for _, e := range r.Entries {
				k := polKey(ep.Addr, uint8(dir), e.Prefix)
				var v sockPolVal
				var err error
				switch {
				case e.Any:
					v.PolicyId, err = policyID(e.AnyPolicy)
				case len(e.Ports) == 0:
					v.PortsId = polPortsDeny
				default:
					v.PortsId, err = d.portSet(e.Ports, ids, usedSets, wantPorts, policyID)
				}
				if err != nil {
					problems = append(problems, PolicyProblem{Pod: ep.Pod, Policies: r.Policies, Err: err})
					continue
				}
				wantRules[k] = v
				owner[k] = i
			}
		}
		wantEps[addrU32(ep.Addr)] = sockPolEp{Flags: flags}
	}

	fullProblem := func(i int, what string, err error) {
		ep := st.Endpoints[i]
		var pols []types.NamespacedName
		for _, r := range []*policy.Rules{ep.Ingress, ep.Egress} {
			if r != nil {
				pols = append(pols, r.Policies...)
			}
		}
		slices.SortFunc(pols, compareNames)
		problems = append(problems, PolicyProblem{Pod: ep.Pod, Policies: slices.Compact(pols),
			Err: fmt.Errorf("%s: %w", what, err)})
	}

	// 1. New port-set entries (under fresh IDs).
	for k, v := range wantPorts {
		if old, ok := pm.ports[k]; ok && old == v {
			continue
		}
		if err := d.put(d.sock.PolicyPorts, k, v); err != nil {
			if !isFull(err) {
				return problems, fmt.Errorf("write policy port: %w", err)
			}
			// Rules naming this set would admit less than they should; drop them below.
			delete(wantPorts, k)
			for rk, rv := range wantRules {
				if rv.PortsId == k.PortsId {
					fullProblem(owner[rk], "policy_ports", fmt.Errorf("%w (%d entries)", ErrPolicyMapFull, d.sock.PolicyPorts.MaxEntries()))
					delete(wantRules, rk)
				}
			}
			continue
		}
		pm.ports[k] = v
	}
	// 2. Rules, before the pods they belong to turn isolated.
	failed := make(map[int]bool)
	for k, v := range wantRules {
		if old, ok := pm.rules[k]; ok && old == v {
			continue
		}
		if err := d.put(d.sock.PolicyRules, k, v); err != nil {
			if !isFull(err) {
				return problems, fmt.Errorf("write policy rule: %w", err)
			}
			delete(wantRules, k)
			if i := owner[k]; !failed[i] {
				failed[i] = true
				fullProblem(i, "policy_rules", fmt.Errorf("%w (%d entries)", ErrPolicyMapFull, d.sock.PolicyRules.MaxEntries()))
			}
			continue
		}
		pm.rules[k] = v
	}
	// 3. Isolation flags.
	for k, v := range wantEps {
		if old, ok := pm.eps[k]; ok && old == v {
			continue
		}
		if err := d.put(d.sock.PolicyEps, k, v); err != nil {
			if !isFull(err) {
				return problems, fmt.Errorf("write policy endpoint: %w", err)
			}
			for i, ep := range st.Endpoints {
				if ep.Addr.Is4() && addrU32(ep.Addr) == k {
					fullProblem(i, "policy_eps", fmt.Errorf("%w (%d entries)", ErrPolicyMapFull, d.sock.PolicyEps.MaxEntries()))
				}
			}
			continue
		}
		pm.eps[k] = v
	}
	// 4. What is no longer wanted: pods first (so none is isolated without its rules), then
	// rules, then port sets nothing points at.
	for k := range pm.eps {
		if _, ok := wantEps[k]; !ok {
			if err := d.del(d.sock.PolicyEps, k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return problems, fmt.Errorf("delete policy endpoint: %w", err)
			}
			delete(pm.eps, k)
		}
	}
	for k := range pm.rules {
		if _, ok := wantRules[k]; !ok {
			if err := d.del(d.sock.PolicyRules, k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return problems, fmt.Errorf("delete policy rule: %w", err)
			}
			delete(pm.rules, k)
		}
	}
	for k := range pm.ports {
		if _, ok := wantPorts[k]; !ok {
			if err := d.del(d.sock.PolicyPorts, k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return problems, fmt.Errorf("delete policy port: %w", err)
			}
			delete(pm.ports, k)
		}
	}
	pm.setIDs = usedSets
	for n, id := range pm.policyIDs {
		if _, ok := usedPolicies[n]; !ok {
			delete(pm.policyIDs, n)
			if err := d.polNames.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return problems, fmt.Errorf("forget policy name: %w", err)
			}
		}
	}
	return problems, nil
}

func (d *Datapath) bumpPolicyRev() error {
	var rev uint32
	if err := d.sock.PolicyRev.Lookup(uint32(0), &rev); err != nil {
		return err
	}
	return d.sock.PolicyRev.Put(uint32(0), rev+1)
}

// SetPolicyHosts sets the addresses a node's pods may always be reached from, whatever their
// ingress rules: the node's own and the pod gateways it answers its pods on.
func (d *Datapath) SetPolicyHosts(addrs []netip.Addr) error {
	return d.setAddrs(d.sock.PolicyHosts, "policy host", addrs)
}

// PolicyIDs returns the policies the counters are kept for, by ID.
func (d *Datapath) PolicyIDs() map[uint32]types.NamespacedName {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[uint32]types.NamespacedName, len(d.pol.policyIDs))
	for n, id := range d.pol.policyIDs {
		out[id] = n
	}
	return out
}

func isFull(err error) bool {
	return errors.Is(err, syscall.E2BIG) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.ENOMEM)
}

func compareNames(a, b types.NamespacedName) int {
	return strings.Compare(a.String(), b.String())
}

// loadPolicyMaps reads what a previous daemon left in the maps; the next sync rewrites it.
func (d *Datapath) loadPolicyMaps() error {
	pm := &d.pol
	pm.eps = make(map[uint32]sockPolEp)
	pm.rules = make(map[sockPolKey]sockPolVal)
	pm.ports = make(map[sockPolPortKey]uint32)
	pm.setIDs = make(map[string]uint32)
	pm.policyIDs = make(map[types.NamespacedName]uint32)
	var (
		ek uint32
		ev sockPolEp
		rk sockPolKey
		rv sockPolVal
		pk sockPolPortKey
		pv uint32
	)
	for it := d.sock.PolicyEps.Iterate(); it.Next(&ek, &ev); {
		pm.eps[ek] = ev
	}
	for it := d.sock.PolicyRules.Iterate(); it.Next(&rk, &rv); {
		pm.rules[rk] = rv
	}
	it := d.sock.PolicyPorts.Iterate()
	for it.Next(&pk, &pv) {
		pm.ports[pk] = pv
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read policy maps: %w", err)
	}
	// IDs are handed out afresh; names of the old ones would mislead.
	var id uint32
	var ids []uint32
	for it := d.polNames.Iterate(); it.Next(&id, new([policyNameBytes]byte)); {
		ids = append(ids, id)
	}
	for _, id := range ids {
		_ = d.polNames.Delete(id)
	}
	pm.loaded = true
	return nil
}

// portSet returns the ID of the port set ports, adding its entries to want the first time
// this sync meets it.
func (d *Datapath) portSet(ports []policy.PortRange, ids *setIDs, used map[string]uint32, want map[sockPolPortKey]uint32,
	policyID func(types.NamespacedName) (uint32, error)) (uint32, error) {
	var b strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&b, "%s/%d-%d/%s,", p.Protocol, p.First, p.Last, p.Policy)
	}
	canon := b.String()
	if id, ok := used[canon]; ok {
		return id, nil
	}
	id, ok := d.pol.setIDs[canon]
	if !ok {
		id = ids.get()
	}
	used[canon] = id
	for _, p := range ports {
		proto, ok := policyProto(p.Protocol)
		if !ok {
			continue
		}
		pid, err := policyID(p.Policy)
		if err != nil {
			return 0, err
		}
		for _, blk := range portBlocks(p.First, p.Last) {
			k := sockPolPortKey{Prefixlen: 48 + uint32(blk.bits), PortsId: id, Proto: proto, Port: portBE(blk.start)}
			if _, dup := want[k]; !dup {
				want[k] = pid
			}
		}
	}
	return id, nil
}

// setIDs hands out port-set IDs that neither the maps nor this sync use. The taken set is
// built once per sync, not once per new set: a sync may meet thousands of sets.
type setIDs struct {
	taken map[uint32]bool
	next  uint32
}

func (d *Datapath) newSetIDs() *setIDs {
	a := &setIDs{taken: make(map[uint32]bool, len(d.pol.setIDs)), next: 1}
	for _, id := range d.pol.setIDs {
		a.taken[id] = true
	}
	for k := range d.pol.ports {
		a.taken[k.PortsId] = true
	}
	return a
}

func (a *setIDs) get() uint32 {
	for a.taken[a.next] {
		a.next++
	}
	a.taken[a.next] = true
	return a.next
}

// newPolicyID picks a free counter slot and zeroes it: its last owner's counts are not this
// policy's.
func (d *Datapath) newPolicyID() (uint32, error) {
	taken := make(map[uint32]bool, len(d.pol.policyIDs))
	for _, id := range d.pol.policyIDs {
		taken[id] = true
	}
	limit := d.sock.PolicyCounts.MaxEntries() / 2
	for id := uint32(1); id < limit; id++ {
		if taken[id] {
			continue
		}
		zero := make([]uint64, ebpf.MustPossibleCPU())
		for dir := uint32(0); dir < 2; dir++ {
			if err := d.sock.PolicyCounts.Put(id*2+dir, zero); err != nil {
				return 0, fmt.Errorf("reset policy counter: %w", err)
			}
		}
		return id, nil
	}
	return 0, fmt.Errorf("%w: more than %d policies have counters", ErrPolicyMapFull, limit-1)
}

func policyProto(p v1.Protocol) (uint8, bool) {
	switch p {
	case v1.ProtocolTCP:
		return 6, true
	case v1.ProtocolUDP:
		return 17, true
	case v1.ProtocolSCTP:
		return 132, true
	}
	return 0, false
}

func polKey(ep netip.Addr, dir uint8, peer netip.Prefix) sockPolKey {
	peer = peer.Masked()
	return sockPolKey{
		Prefixlen: 64 + uint32(peer.Bits()),
		Ep:        addrU32(ep),
		Dir:       dir,
		Peer:      addrU32(peer.Addr()),
	}
}

type portBlock struct {
	start uint16
	bits  int // prefix length over 16 bits
}

// portBlocks splits [first, last] into the fewest aligned power-of-two blocks, each one LPM
// entry.
func portBlocks(first, last uint16) []portBlock {
	var out []portBlock
	lo, hi := uint32(first), uint32(last)
	for lo <= hi {
		// The largest block aligned at lo that stays within hi.
		size := uint32(1) << 16
		if lo != 0 {
			size = uint32(1) << bits.TrailingZeros32(lo)
		}
		for size > hi-lo+1 {
			size >>= 1
		}
		out = append(out, portBlock{start: uint16(lo), bits: 16 - bits.TrailingZeros32(size)})
		lo += size
	}
	return out
}
