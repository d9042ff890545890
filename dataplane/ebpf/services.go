package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// Layouts shared by all three objects; bpf2go generated them from the sock object.
type (
	svcKey     = sockSvcKey
	svcVal     = sockSvcVal
	slotKey    = sockSlotKey
	backendVal = sockBackend
)

// Flag bits from bpf/lib/maps.h.
const (
	svcFlagLocal    = 1 << 0
	svcFlagAffinity = 1 << 1
	beFlagTerm      = 1 << 0
	// svc_key.scope.
	svcScopeInternal = 1
)

// maxMembers bounds a service's backends: slot counts are 16-bit in svc_val.
const maxMembers = 1<<16 - 1

// ErrFull is wrapped when a map cannot take another service or backend.
var ErrFull = errors.New("ebpf: map full")

type backendKey struct {
	addr  netip.Addr
	port  uint16
	proto Protocol
}

type backendState struct {
	id    uint32
	key   backendKey
	flags uint8
	refs  int
	// active counts the references from selectable slots. The terminating flag is global
	// to the backend, so it is set only when no service selects the backend: a flag that
	// followed the last upsert would flip on every sync when services disagree (e.g. a
	// serving terminating pod that is a fallback for one frontend but not another).
	active int
}

type serviceState struct {
	id  uint32
	svc Service
	// active are selectable, terminating follow them in the slots.
	active, terminating []uint32
	// maglevOK means the pinned table matches active (false after a restart until rebuilt).
	maglevOK bool
}

// idAllocator hands out IDs 1..limit-1, rotating so a freed ID is not reused at once: flows
// that still name an old ID then find no backend rather than a stranger.
type idAllocator struct {
	used  map[uint32]bool
	next  uint32
	limit uint32
}

func newIDAllocator(entries int) idAllocator {
	return idAllocator{used: make(map[uint32]bool), next: 1, limit: uint32(entries)}
}

func (a *idAllocator) get() (uint32, error) {
	for range a.limit {
		id := a.next
		a.next++
		if a.next >= a.limit {
			a.next = 1
		}
		if id != 0 && !a.used[id] {
			a.used[id] = true
			return id, nil
		}
	}
	return 0, ErrFull
}

func (a *idAllocator) take(id uint32) { a.used[id] = true }
func (a *idAllocator) put(id uint32)  { delete(a.used, id) }

func svcMapKey(k ServiceKey) svcKey {
	var addr uint32
	if !k.NodePort() {
		addr = addrU32(k.Addr)
	}
	key := svcKey{Addr: addr, Port: portBE(k.Port), Proto: uint8(k.Proto)}
	if k.Internal {
		key.Scope = svcScopeInternal
	}
	return key
}

// serviceKey is svcMapKey's inverse.
func serviceKey(sk svcKey) ServiceKey {
	key := ServiceKey{Port: portHost(sk.Port), Proto: Protocol(sk.Proto), Internal: sk.Scope == svcScopeInternal}
	if sk.Addr != 0 {
		key.Addr = u32Addr(sk.Addr)
	}
	return key
}

func validateService(s Service, backends []Backend) error {
	if !s.NodePort() && !s.Addr.Is4() {
		return fmt.Errorf("service %s: only IPv4 is supported", s.ServiceKey)
	}
	if s.Proto != TCP && s.Proto != UDP {
		return fmt.Errorf("service %s: unsupported protocol", s.ServiceKey)
	}
	if s.Algorithm > SourceHash {
		return fmt.Errorf("service %s: unknown algorithm %d", s.ServiceKey, s.Algorithm)
	}
	if s.AffinityTimeout < 0 || s.AffinityTimeout > time.Duration(1<<32-1)*time.Second {
		return fmt.Errorf("service %s: affinity timeout %s out of range", s.ServiceKey, s.AffinityTimeout)
	}
	if len(backends) > maxMembers {
		return fmt.Errorf("service %s: %d backends, at most %d", s.ServiceKey, len(backends), maxMembers)
	}
	for _, b := range backends {
		if !b.Addr.Is4() || b.Port == 0 {
			return fmt.Errorf("service %s: bad backend %s", s.ServiceKey, b)
		}
	}
	return nil
}

// UpsertService makes the maps hold svc with exactly these backends. Ready backends are
// selectable; Terminating ones keep the flows they have. Calling it again with the same
// arguments writes nothing. For SourceHash it (re)builds the service's Maglev table when its
// ready backends change.
func (d *Datapath) UpsertService(svc Service, backends []Backend) error {
	if err := validateService(svc, backends); err != nil {
		return err
	}
	svc.ServiceKey = normalizeKey(svc.ServiceKey)
	if svc.AffinityTimeout > 0 {
		// BPF counts whole seconds; never round a wanted affinity away.
		svc.AffinityTimeout = max(svc.AffinityTimeout.Truncate(time.Second), time.Second)
	}

	d.mu.Lock()
	defer d.mu.Unlock()

	// Canonical member order (sorted, deduplicated, ready first) makes the comparison with
	// what the maps hold, and the slots themselves, independent of the caller's order.
	seen := make(map[backendKey]bool, len(backends))
	var ready, term []member
	for _, b := range backends {
		k := backendKey{addr: b.Addr, port: b.Port, proto: svc.Proto}
		if seen[k] {
			continue
		}
		seen[k] = true
		if b.Terminating {
			term = append(term, member{k, true})
		} else {
			ready = append(ready, member{k, false})
		}
	}
	cmp := func(a, b member) int {
		if c := a.key.addr.Compare(b.key.addr); c != 0 {
			return c
		}
		return int(a.key.port) - int(b.key.port)
	}
	slices.SortFunc(ready, cmp)
	slices.SortFunc(term, cmp)

	old := d.services[svc.ServiceKey]
	if old != nil && old.svc == svc && d.sameMembers(old.active, ready) &&
		d.sameMembers(old.terminating, term) && (svc.Algorithm != SourceHash || old.maglevOK) {
		return nil
	}

	st := &serviceState{svc: svc}
	if old != nil {
		st.id = old.id
	} else {
		id, err := d.svcIDs.get()
		if err != nil {
			return fmt.Errorf("service %s: allocate id: %w", svc.ServiceKey, err)
		}
		st.id = id
		// A fresh ID may be a reused one: restart its rotation.
		if err := d.put(d.sock.RrState, id, uint32(0)); err != nil {
			d.svcIDs.put(id)
			return fmt.Errorf("service %s: reset round-robin state: %w", svc.ServiceKey, err)
		}
	}

	// Take references first so nothing this service still uses is freed midway.
	for _, m := range append(slices.Clone(ready), term...) {
		id, err := d.refBackend(m.key, m.term)
		if err != nil {
			d.unrefAll(st)
			if old == nil {
				d.svcIDs.put(st.id)
			}
			return fmt.Errorf("service %s: backend %s: %w", svc.ServiceKey,
				netip.AddrPortFrom(m.key.addr, m.key.port), err)
		}
		if m.term {
			st.terminating = append(st.terminating, id)
		} else {
			st.active = append(st.active, id)
		}
	}
	if err := d.writeService(old, st); err != nil {
		d.unrefAll(st)
		if old == nil {
			d.svcIDs.put(st.id)
		}
		return fmt.Errorf("service %s: %w", svc.ServiceKey, err)
	}
	if old != nil {
		d.unrefAll(old)
	}
	d.services[svc.ServiceKey] = st
	return nil
}

// writeService writes slots, the Maglev table and then the service entry, so a program never
// sees a count that runs past the filled slots; slots beyond the new size go last.
func (d *Datapath) writeService(old, st *serviceState) error {
	members := append(slices.Clone(st.active), st.terminating...)
	for i, id := range members {
		if err := d.put(d.sock.SvcSlots, slotKey{SvcId: st.id, Slot: uint32(i)}, id); err != nil {
			return fmt.Errorf("write slot %d: %w", i, err)
		}
	}

	maglevChanged := old == nil || old.svc.Algorithm != SourceHash || !old.maglevOK ||
		!slices.Equal(old.active, st.active)
	switch {
	case st.svc.Algorithm == SourceHash && maglevChanged:
		if err := d.writeMaglev(st); err != nil {
			return err
		}
		st.maglevOK = true
	case st.svc.Algorithm == SourceHash:
		st.maglevOK = true
	case old != nil && old.svc.Algorithm == SourceHash:
		if err := d.del(d.sock.MaglevTables, st.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete maglev table: %w", err)
		}
	}

	var flags uint8
	if st.svc.ExternalLocal {
		flags |= svcFlagLocal
	}
	if st.svc.AffinityTimeout > 0 {
		flags |= svcFlagAffinity
	}
	val := svcVal{
		Id:              st.id,
		Count:           uint16(len(st.active)),
		Members:         uint16(len(members)),
		Algo:            uint8(st.svc.Algorithm),
		Flags:           flags,
		AffinityTimeout: uint32(st.svc.AffinityTimeout / time.Second),
	}
	if err := d.put(d.sock.Services, svcMapKey(st.svc.ServiceKey), val); err != nil {
		return fmt.Errorf("write service entry: %w", err)
	}

	if old != nil {
		for i := len(members); i < len(old.active)+len(old.terminating); i++ {
			if err := d.del(d.sock.SvcSlots, slotKey{SvcId: st.id, Slot: uint32(i)}); err != nil &&
				!errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete slot %d: %w", i, err)
			}
		}
	}
	return nil
}

// writeMaglev builds the service's table in a new inner map and swaps it in whole.
func (d *Datapath) writeMaglev(st *serviceState) error {
	names := make([]string, len(st.active))
	for i, id := range st.active {
		k := d.byID[id].key
		names[i] = netip.AddrPortFrom(k.addr, k.port).String()
	}
	m := MaglevTableSize(len(names))
	table := Maglev(names, m, d.cfg.MaglevSeed)

	spec := d.maglevInner.Copy()
	spec.MaxEntries = uint32(m + 1)
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create maglev table: %w", err)
	}
	defer inner.Close()

	keys := make([]uint32, m+1)
	vals := make([]uint32, m+1)
	vals[0] = uint32(m)
	for i, b := range table {
		keys[i+1] = uint32(i + 1)
		vals[i+1] = st.active[b]
	}
	if _, err := inner.BatchUpdate(keys, vals, nil); err != nil {
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("fill maglev table: %w", err)
		}
		for i := range keys {
			if err := inner.Put(keys[i], vals[i]); err != nil {
				return fmt.Errorf("fill maglev table: %w", err)
			}
		}
	}
	if err := d.put(d.sock.MaglevTables, st.id, inner); err != nil {
		return fmt.Errorf("install maglev table: %w", err)
	}
	return nil
}

// DeleteService removes a frontend. Flows already translated keep their backends until their
// conntrack entries expire, as long as the backends still belong to another service.
func (d *Datapath) DeleteService(key ServiceKey) error {
	key = normalizeKey(key)
	d.mu.Lock()
	defer d.mu.Unlock()

	st := d.services[key]
	if st == nil {
		return nil
	}
	if err := d.del(d.sock.Services, svcMapKey(key)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete service %s: %w", key, err)
	}
	var errs []error
	for i := range len(st.active) + len(st.terminating) {
		if err := d.del(d.sock.SvcSlots, slotKey{SvcId: st.id, Slot: uint32(i)}); err != nil &&
			!errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if err := d.del(d.sock.MaglevTables, st.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	d.unrefAll(st)
	d.svcIDs.put(st.id)
	delete(d.services, key)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete service %s: %w", key, err)
	}
	return nil
}

// ServiceKeys lists the frontends the maps hold, so a full sync can delete the ones it no
// longer wants.
func (d *Datapath) ServiceKeys() []ServiceKey {
	d.mu.Lock()
	defer d.mu.Unlock()
	keys := make([]ServiceKey, 0, len(d.services))
	for k := range d.services {
		keys = append(keys, k)
	}
	return keys
}

// SetNodeAddrs sets the addresses NodePorts answer on (and may SNAT to): the node's own
// addresses in its network namespace.
func (d *Datapath) SetNodeAddrs(addrs []netip.Addr) error {
	return d.setAddrs(d.sock.NodeAddrs, "node address", addrs)
}

// SetPeerNodes sets the other nodes' addresses, which pod traffic reaches unmasqueraded.
func (d *Datapath) SetPeerNodes(addrs []netip.Addr) error {
	return d.setAddrs(d.sock.PeerNodes, "peer node", addrs)
}

// setAddrs makes m, a set of IPv4 addresses, hold exactly addrs (IPv6 ones are skipped),
// writing only what differs so that identical calls write nothing.
func (d *Datapath) setAddrs(m *ebpf.Map, what string, addrs []netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := make(map[uint32]bool, len(addrs))
	for _, a := range addrs {
		if a.Is4() {
			want[addrU32(a)] = true
		}
	}
	var (
		k, v  uint32
		stale []uint32
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if want[k] {
			delete(want, k)
		} else {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %ses: %w", what, err)
	}
	for _, k := range stale {
		if err := d.del(m, k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s %s: %w", what, u32Addr(k), err)
		}
	}
	for k := range want {
		if err := d.put(m, k, uint32(1)); err != nil {
			return fmt.Errorf("write %s %s: %w", what, u32Addr(k), err)
		}
	}
	return nil
}

// BackendConns returns the active connection count BPF keeps for a backend of a service
// protocol (least-conn's input), and false when no service uses that backend.
func (d *Datapath) BackendConns(addr netip.Addr, port uint16, proto Protocol) (uint32, bool, error) {
	d.mu.Lock()
	b := d.backends[backendKey{addr: addr, port: port, proto: proto}]
	d.mu.Unlock()
	if b == nil {
		return 0, false, nil
	}
	var n uint32
	if err := d.sock.BackendConns.Lookup(b.id, &n); err != nil {
		return 0, false, fmt.Errorf("read connection count: %w", err)
	}
	return n, true, nil
}

// put and del are the only ways this file writes a map, so MapWrites counts every write.
func (d *Datapath) put(m *ebpf.Map, k, v any) error {
	d.writes.Add(1)
	return m.Put(k, v)
}

func (d *Datapath) del(m *ebpf.Map, k any) error {
	d.writes.Add(1)
	return m.Delete(k)
}

// MapWrites counts the map updates and deletions made through this Datapath: a sync that
// finds nothing to change leaves it unchanged.
func (d *Datapath) MapWrites() uint64 { return d.writes.Load() }

// Stats are entry counts of the maps userspace fills.
type Stats struct {
	Services, Backends int
}

// Stats returns how many services and backends the maps hold.
func (d *Datapath) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return Stats{Services: len(d.services), Backends: len(d.byID)}
}

func normalizeKey(k ServiceKey) ServiceKey {
	if k.NodePort() {
		k.Addr = netip.Addr{}
	}
	return k
}

type member struct {
	key  backendKey
	term bool
}

func (d *Datapath) sameMembers(ids []uint32, want []member) bool {
	if len(ids) != len(want) {
		return false
	}
	for i, id := range ids {
		b := d.byID[id]
		if b == nil || b.key != want[i].key {
			return false
		}
	}
	return true
}

// refBackend returns the ID of a backend, creating its entry on first use, and takes a
// reference on it.
func (d *Datapath) refBackend(k backendKey, term bool) (uint32, error) {
	b := d.backends[k]
	created := b == nil
	if created {
		id, err := d.beIDs.get()
		if err != nil {
			return 0, fmt.Errorf("allocate id: %w", err)
		}
		// The ID may have been used before: start its count from zero.
		if err := d.put(d.sock.BackendConns, id, uint32(0)); err != nil {
			d.beIDs.put(id)
			return 0, fmt.Errorf("reset connection count: %w", err)
		}
		b = &backendState{id: id, key: k}
		d.backends[k] = b
		d.byID[id] = b
	}
	b.refs++
	if !term {
		b.active++
	}
	if err := d.writeBackend(b, created); err != nil {
		b.refs--
		if !term {
			b.active--
		}
		if b.refs == 0 {
			d.dropBackend(b)
		}
		return 0, err
	}
	return b.id, nil
}

// writeBackend writes the backend entry when it is new or its flag must change.
func (d *Datapath) writeBackend(b *backendState, force bool) error {
	var flags uint8
	if b.active == 0 {
		flags = beFlagTerm
	}
	if !force && b.flags == flags {
		return nil
	}
	v := backendVal{Addr: addrU32(b.key.addr), Port: portBE(b.key.port), Proto: uint8(b.key.proto), Flags: flags}
	if err := d.put(d.sock.Backends, b.id, v); err != nil {
		return fmt.Errorf("write backend: %w", err)
	}
	b.flags = flags
	return nil
}

func (d *Datapath) unrefAll(st *serviceState) {
	for i, id := range append(slices.Clone(st.active), st.terminating...) {
		b := d.byID[id]
		if b == nil {
			continue
		}
		b.refs--
		if i < len(st.active) {
			b.active--
		}
		if b.refs <= 0 {
			d.dropBackend(b)
			continue
		}
		if err := d.writeBackend(b, false); err != nil {
			// New connections never pick it (slots decide); only affinity may still.
			d.log.Warn("mark backend terminating", "backend", netip.AddrPortFrom(b.key.addr, b.key.port), "err", err)
		}
	}
}

func (d *Datapath) dropBackend(b *backendState) {
	if err := d.del(d.sock.Backends, b.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		d.log.Warn("delete backend", "backend", netip.AddrPortFrom(b.key.addr, b.key.port), "err", err)
	}
	delete(d.backends, b.key)
	delete(d.byID, b.id)
	d.beIDs.put(b.id)
}

// restore rebuilds the bookkeeping from pinned maps after a restart.
func (d *Datapath) restore() error {
	var (
		id uint32
		bv backendVal
	)
	it := d.sock.Backends.Iterate()
	for it.Next(&id, &bv) {
		k := backendKey{addr: u32Addr(bv.Addr), port: portHost(bv.Port), proto: Protocol(bv.Proto)}
		b := &backendState{id: id, key: k, flags: bv.Flags}
		d.backends[k] = b
		d.byID[id] = b
		d.beIDs.take(id)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate backends: %w", err)
	}

	var (
		sk svcKey
		sv svcVal
	)
	sit := d.sock.Services.Iterate()
	for sit.Next(&sk, &sv) {
		key := serviceKey(sk)
		st := &serviceState{id: sv.Id, svc: Service{
			ServiceKey:      key,
			Algorithm:       Algorithm(sv.Algo),
			ExternalLocal:   sv.Flags&svcFlagLocal != 0,
			AffinityTimeout: time.Duration(sv.AffinityTimeout) * time.Second,
		}}
		for i := range uint32(sv.Members) {
			var bid uint32
			if err := d.sock.SvcSlots.Lookup(slotKey{SvcId: sv.Id, Slot: i}, &bid); err != nil {
				return fmt.Errorf("service %s slot %d: %w", key, i, err)
			}
			b := d.byID[bid]
			if b == nil {
				return fmt.Errorf("service %s slot %d: unknown backend %d", key, i, bid)
			}
			b.refs++
			if i < uint32(sv.Count) {
				b.active++
				st.active = append(st.active, bid)
			} else {
				st.terminating = append(st.terminating, bid)
			}
		}
		d.svcIDs.take(sv.Id)
		d.services[key] = st
	}
	if err := sit.Err(); err != nil {
		return fmt.Errorf("iterate services: %w", err)
	}
	// Backends no service holds (a crash between writes) are garbage; flags older code
	// wrote per upsert are brought in line with the rule in backendState.
	for _, b := range d.byID {
		if b.refs == 0 {
			d.dropBackend(b)
			continue
		}
		if err := d.writeBackend(b, false); err != nil {
			return err
		}
	}
	return nil
}
