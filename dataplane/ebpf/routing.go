package ebpf

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// Routing modes (Config.Routing).
const (
	RoutingNative = "native"
	RoutingVXLAN  = "vxlan"
)

// DefaultVNI is the VXLAN network identifier when Config.VNI is zero.
const DefaultVNI = 1

// routing_modes in bpf/lib/common.h.
const routingModeVXLAN = 1

// Layouts of the routing maps (bpf/lib/maps.h).
type (
	endpointVal = sockEndpointInfo
	lpm4Key     = sockLpm4Key
)

// Endpoint is a pod on this node as pod routing needs it: the host side of its veth, where
// packets for IP are delivered with bpf_redirect_peer, and the MACs of the pod's link.
type Endpoint struct {
	IP netip.Addr
	// HostIfindex is the host-side veth's ifindex in the node's netns.
	HostIfindex int
	// HostMAC is the host-side veth's MAC (the pod's gateway), PodMAC the pod's eth0's: a
	// delivered packet goes from HostMAC to PodMAC.
	HostMAC, PodMAC net.HardwareAddr
}

func (e Endpoint) String() string {
	return fmt.Sprintf("%s ifindex %d %s->%s", e.IP, e.HostIfindex, e.HostMAC, e.PodMAC)
}

func (e Endpoint) equal(o Endpoint) bool {
	return e.IP == o.IP && e.HostIfindex == o.HostIfindex && bytes.Equal(e.HostMAC, o.HostMAC) &&
		bytes.Equal(e.PodMAC, o.PodMAC)
}

func validateEndpoint(ep Endpoint) error {
	switch {
	case !ep.IP.Is4():
		return fmt.Errorf("endpoint %s: only IPv4 is supported", ep.IP)
	case ep.HostIfindex <= 0:
		return fmt.Errorf("endpoint %s: bad ifindex %d", ep.IP, ep.HostIfindex)
	case len(ep.HostMAC) != 6 || len(ep.PodMAC) != 6:
		return fmt.Errorf("endpoint %s: MACs must be 6 bytes", ep.IP)
	}
	return nil
}

func endpointMapVal(ep Endpoint) endpointVal {
	v := endpointVal{Ifindex: uint32(ep.HostIfindex)}
	copy(v.HostMac[:], ep.HostMAC)
	copy(v.PodMac[:], ep.PodMAC)
	return v
}

func endpointFromMap(k uint32, v endpointVal) Endpoint {
	return Endpoint{
		IP:          u32Addr(k),
		HostIfindex: int(v.Ifindex),
		HostMAC:     slices.Clone(v.HostMac[:]),
		PodMAC:      slices.Clone(v.PodMac[:]),
	}
}

// UpsertEndpoint makes packets for ep.IP, from pods of this node and from the tunnel, go
// straight into the pod's netns. Writing what the map already holds writes nothing.
func (d *Datapath) UpsertEndpoint(ep Endpoint) error {
	if err := validateEndpoint(ep); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.upsertEndpoint(ep)
}

func (d *Datapath) upsertEndpoint(ep Endpoint) error {
	k := addrU32(ep.IP)
	want := endpointMapVal(ep)
	var have endpointVal
	if err := d.sock.Endpoints.Lookup(k, &have); err == nil && have == want {
		return nil
	}
	if err := d.put(d.sock.Endpoints, k, want); err != nil {
		return fmt.Errorf("write endpoint %s: %w", ep.IP, err)
	}
	return nil
}

// DeleteEndpoint removes the endpoint for ip; a missing one is not an error.
func (d *Datapath) DeleteEndpoint(ip netip.Addr) error {
	if !ip.Is4() {
		return fmt.Errorf("endpoint %s: only IPv4 is supported", ip)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.del(d.sock.Endpoints, addrU32(ip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s: %w", ip, err)
	}
	return nil
}

// Endpoints lists the endpoints map, sorted by IP.
func (d *Datapath) Endpoints() ([]Endpoint, error) {
	return readEndpoints(d.sock.Endpoints)
}

// SetEndpoints makes the endpoints map hold exactly eps, writing only what differs.
func (d *Datapath) SetEndpoints(eps []Endpoint) error {
	want := make(map[netip.Addr]Endpoint, len(eps))
	for _, ep := range eps {
		if err := validateEndpoint(ep); err != nil {
			return err
		}
		want[ep.IP] = ep
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	have, err := readEndpoints(d.sock.Endpoints)
	if err != nil {
		return err
	}
	var errs []error
	for _, ep := range have {
		if w, ok := want[ep.IP]; ok && w.equal(ep) {
			delete(want, ep.IP)
			continue
		}
		if _, ok := want[ep.IP]; ok {
			continue // rewritten below
		}
		if err := d.del(d.sock.Endpoints, addrU32(ep.IP)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete endpoint %s: %w", ep.IP, err))
		}
	}
	for _, ep := range want {
		errs = append(errs, d.upsertEndpoint(ep))
	}
	return errors.Join(errs...)
}

// SetPodNetns makes the netns_addrs map equal to cookies: each local pod's network namespace
// cookie with the pod's IPv4 address, so the socket load balancer keys a pod's unbound sockets
// by its address (affinity, source hashing) as the packet path does.
func (d *Datapath) SetPodNetns(cookies map[uint64]netip.Addr) error {
	for c, ip := range cookies {
		if !ip.Is4() || c == 0 {
			return fmt.Errorf("pod netns %d: address %s: want a cookie and an IPv4 address", c, ip)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var (
		k    uint64
		v    uint32
		errs []error
		have = map[uint64]uint32{}
	)
	it := d.sock.NetnsAddrs.Iterate()
	for it.Next(&k, &v) {
		have[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pod netns map: %w", err)
	}
	for c, a := range have {
		if ip, ok := cookies[c]; !ok || addrU32(ip) != a {
			if err := d.del(d.sock.NetnsAddrs, c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("delete pod netns %d: %w", c, err))
			}
		}
	}
	for c, ip := range cookies {
		if a, ok := have[c]; ok && a == addrU32(ip) {
			continue
		}
		if err := d.put(d.sock.NetnsAddrs, c, addrU32(ip)); err != nil {
			errs = append(errs, fmt.Errorf("write pod netns %d: %w", c, err))
		}
	}
	return errors.Join(errs...)
}

func readEndpoints(m *ebpf.Map) ([]Endpoint, error) {
	var (
		k   uint32
		v   endpointVal
		out []Endpoint
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, endpointFromMap(k, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return a.IP.Compare(b.IP) })
	return out, nil
}

func tunnelKey(p netip.Prefix) (lpm4Key, error) {
	if !p.IsValid() || !p.Addr().Is4() {
		return lpm4Key{}, fmt.Errorf("tunnel route %s: only IPv4 is supported", p)
	}
	p = p.Masked()
	return lpm4Key{Prefixlen: uint32(p.Bits()), Addr: addrU32(p.Addr())}, nil
}

func prefixFromKey(k lpm4Key) netip.Prefix {
	return netip.PrefixFrom(u32Addr(k.Addr), int(k.Prefixlen))
}

// UpsertTunnelRoute sends pod traffic for podCIDR through the VXLAN tunnel to nodeIP (used in
// VXLAN mode only). Writing what the map already holds writes nothing.
func (d *Datapath) UpsertTunnelRoute(podCIDR netip.Prefix, nodeIP netip.Addr) error {
	k, err := tunnelKey(podCIDR)
	if err != nil {
		return err
	}
	if !nodeIP.Is4() {
		return fmt.Errorf("tunnel route %s: node address %s is not IPv4", podCIDR, nodeIP)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.upsertTunnelRoute(k, nodeIP)
}

func (d *Datapath) upsertTunnelRoute(k lpm4Key, nodeIP netip.Addr) error {
	want := addrU32(nodeIP)
	var have uint32
	if err := d.sock.TunnelRoutes.Lookup(k, &have); err == nil && have == want {
		return nil
	}
	if err := d.put(d.sock.TunnelRoutes, k, want); err != nil {
		return fmt.Errorf("write tunnel route %s: %w", prefixFromKey(k), err)
	}
	return nil
}

// DeleteTunnelRoute removes the tunnel route for podCIDR; a missing one is not an error.
func (d *Datapath) DeleteTunnelRoute(podCIDR netip.Prefix) error {
	k, err := tunnelKey(podCIDR)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.del(d.sock.TunnelRoutes, k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete tunnel route %s: %w", podCIDR, err)
	}
	return nil
}

// TunnelRoutes returns the tunnel routes map: podCIDR -> node address.
func (d *Datapath) TunnelRoutes() (map[netip.Prefix]netip.Addr, error) {
	return readTunnelRoutes(d.sock.TunnelRoutes)
}

// SetTunnelRoutes makes the tunnel routes map hold exactly routes, writing only what differs.
func (d *Datapath) SetTunnelRoutes(routes map[netip.Prefix]netip.Addr) error {
	want := make(map[lpm4Key]netip.Addr, len(routes))
	for p, ip := range routes {
		k, err := tunnelKey(p)
		if err != nil {
			return err
		}
		if !ip.Is4() {
			return fmt.Errorf("tunnel route %s: node address %s is not IPv4", p, ip)
		}
		want[k] = ip
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var (
		k     lpm4Key
		v     uint32
		stale []lpm4Key
	)
	it := d.sock.TunnelRoutes.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read tunnel routes: %w", err)
	}
	var errs []error
	for _, k := range stale {
		if err := d.del(d.sock.TunnelRoutes, k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete tunnel route %s: %w", prefixFromKey(k), err))
		}
	}
	for k, ip := range want {
		errs = append(errs, d.upsertTunnelRoute(k, ip))
	}
	return errors.Join(errs...)
}

func readTunnelRoutes(m *ebpf.Map) (map[netip.Prefix]netip.Addr, error) {
	var (
		k lpm4Key
		v uint32
	)
	out := make(map[netip.Prefix]netip.Addr)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[prefixFromKey(k)] = u32Addr(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read tunnel routes: %w", err)
	}
	return out, nil
}

// Counter names, in the order of enum stat_reason in bpf/lib/maps.h.
var counterNames = [...]string{
	"redirect_peer",   // pod -> pod on this node, straight into the peer's netns
	"tunnel_encap",    // pod -> remote pod, handed to the VXLAN device
	"tunnel_deliver",  // decapsulated -> pod on this node, into the peer's netns
	"tunnel_host",     // decapsulated -> the stack
	"masquerade_new",  // new masqueraded flow
	"masquerade_fail", // masquerade wanted, but no source address or port was free
	"svc_snat_fail",   // service flow dropped: no SNAT port free
	"svc_ct_fail",     // service flow dropped: its conntrack entries could not be stored
	"svc_nat_fail",    // service packet dropped: the rewrite failed
	"svc_fwd_fail",    // translated packet dropped: TTL expired or MAC rewrite failed
	"svc_to_stack",    // translated at a node device, left to the stack (no FIB route)
	"svc_new",         // new service flow (tc path; the socket LB translates at connect)
	"ct_timer_fail",   // a conntrack expiry timer could not be armed
}

// Counters returns the packet counters the programs keep, by reason (summed over CPUs), named
// as in counterNames.
func (d *Datapath) Counters() (map[string]uint64, error) {
	return readCounters(d.sock.Stats)
}

func readCounters(m *ebpf.Map) (map[string]uint64, error) {
	out := make(map[string]uint64, len(counterNames))
	for i, name := range counterNames {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", name, err)
		}
		var sum uint64
		for _, n := range per {
			sum += n
		}
		out[name] = sum
	}
	return out, nil
}
