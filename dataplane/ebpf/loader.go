// Package ebpf is the eBPF backend of the dataplane: it loads the programs built from bpf/,
// pins their maps under a per-node directory, attaches them, and writes services and their
// backends into the maps.
package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
)

// ErrNotSupported is wrapped by Load's error when the kernel lacks a feature the programs
// need. It is cilium/ebpf's sentinel, so errors.Is works with either name.
var ErrNotSupported = ebpf.ErrNotSupported

// Map sizes used when Config leaves them zero.
const (
	DefaultServiceEntries  = 1 << 16 // frontends
	DefaultBackendEntries  = 1 << 16 // backends, and service-backend slots
	DefaultConnections     = 1 << 19 // tracked connections (two conntrack entries each)
	DefaultAffinityEntries = 1 << 16 // (service, client) session-affinity records
)

// Config is what Load needs. Only PinDir is required.
type Config struct {
	// PinDir is a directory on a bpffs, one per node, e.g. /sys/fs/bpf/capstan/<node>. It is
	// created if missing. Maps pinned there survive the daemon, and with them conntrack.
	PinDir string

	ServiceEntries  int
	BackendEntries  int
	Connections     int
	AffinityEntries int

	// NetworkPolicy map sizes; zero takes the Default* values. PolicyIDs bounds the policies
	// that get per-policy counters. Policy connection tracking is sized by Connections.
	PolicyEndpoints, PolicyRules, PolicyPorts, PolicyIDs int
	// PolicyOnly loads the pod and node programs for NetworkPolicy alone, for nodes whose
	// Services are iptables' or kube-proxy's: no translation, no routing, and the verdicts
	// taken where the stack's DNAT is done. Their pinned links are named policy-pod-* and
	// policy-node-*, apart from the eBPF mode's.
	PolicyOnly bool
	// PolicyEventsPerSec limits the drop events each CPU emits; zero means 100, negative none.
	PolicyEventsPerSec int

	// MaglevSeed must be the same on every node of a cluster so that source-hash sends a
	// client to the same backend whichever node it reaches.
	MaglevSeed uint32

	// Conntrack idle timeouts; zero means 6h (TCP), 10s (after FIN/RST), 60s (UDP).
	TCPTimeout      time.Duration
	TCPCloseTimeout time.Duration
	UDPTimeout      time.Duration

	// SNATAddr is the source given to traffic that reaches a service (not a NodePort)
	// through a node device; unset leaves such traffic un-SNATed. NodePort traffic is always
	// SNATed to the node address it arrived on, unless the service is ExternalLocal.
	SNATAddr netip.Addr
	// SNAT source ports; zero means 61000-65535, above Linux's default ephemeral range.
	// NodePort SNAT and masquerade share them.
	SNATPortMin, SNATPortMax uint16

	// Routing is how pods reach pods of other nodes: RoutingNative ("native", the default)
	// leaves them to the kernel's routes (the daemon installs podCIDR via nodeIP);
	// RoutingVXLAN ("vxlan") encapsulates them through the collect-metadata VXLAN device
	// VXLANIfindex (in the node's netns) to the node UpsertTunnelRoute names. In VXLAN mode
	// the device's ingress needs AttachTunnel. Pods of this node are always reached with
	// bpf_redirect_peer, for the addresses UpsertEndpoint names.
	Routing      string
	VXLANIfindex int
	// VNI is the VXLAN network identifier; zero means DefaultVNI.
	VNI uint32

	// Masquerade SNATs traffic from ClusterCIDR (the cluster's pod range) to destinations
	// outside ClusterCIDR and ServiceCIDR to the node's address on the node device's egress,
	// the address the kernel would pick as source there (SNATAddr when it has none). It is
	// off unless Masquerade is true and ClusterCIDR is set; callers default it to true.
	Masquerade  bool
	ClusterCIDR netip.Prefix
	// ServiceCIDR is never masqueraded; optional.
	ServiceCIDR netip.Prefix

	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.ServiceEntries, DefaultServiceEntries)
	def(&c.BackendEntries, DefaultBackendEntries)
	def(&c.Connections, DefaultConnections)
	def(&c.AffinityEntries, DefaultAffinityEntries)
	def(&c.PolicyEndpoints, DefaultPolicyEndpoints)
	def(&c.PolicyRules, DefaultPolicyRules)
	def(&c.PolicyPorts, DefaultPolicyPorts)
	def(&c.PolicyIDs, DefaultPolicyIDs)
	if c.PolicyEventsPerSec == 0 {
		c.PolicyEventsPerSec = 100
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur(&c.TCPTimeout, 6*time.Hour)
	defDur(&c.TCPCloseTimeout, 10*time.Second)
	defDur(&c.UDPTimeout, time.Minute)
	if c.SNATPortMin == 0 {
		c.SNATPortMin = 61000
	}
	if c.SNATPortMax == 0 {
		c.SNATPortMax = 65535
	}
	if c.Routing == "" {
		c.Routing = RoutingNative
	}
	if c.VNI == 0 {
		c.VNI = DefaultVNI
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	if c.PinDir == "" {
		return errors.New("pin dir is required")
	}
	if c.SNATPortMin > c.SNATPortMax {
		return fmt.Errorf("snat port range %d-%d is empty", c.SNATPortMin, c.SNATPortMax)
	}
	if c.SNATAddr.IsValid() && !c.SNATAddr.Is4() {
		return fmt.Errorf("snat address %s is not IPv4", c.SNATAddr)
	}
	switch c.Routing {
	case RoutingNative:
	case RoutingVXLAN:
		if c.VXLANIfindex <= 0 {
			return errors.New("vxlan routing needs the vxlan device's ifindex")
		}
	default:
		return fmt.Errorf("unknown routing mode %q", c.Routing)
	}
	if c.VNI >= 1<<24 {
		return fmt.Errorf("vni %d does not fit in 24 bits", c.VNI)
	}
	for _, p := range []netip.Prefix{c.ClusterCIDR, c.ServiceCIDR} {
		if p.IsValid() && !p.Addr().Is4() {
			return fmt.Errorf("cidr %s is not IPv4", p)
		}
	}
	return nil
}

// Datapath is the loaded programs and their maps for one node. Its methods are safe for
// concurrent use.
type Datapath struct {
	cfg    Config
	log    *slog.Logger
	sock   sockObjects
	tcPod  tcPodObjects
	tcNode tcNodeObjects
	// maglevInner describes one Maglev table; each service gets its own size.
	maglevInner *ebpf.MapSpec

	mu       sync.Mutex
	services map[ServiceKey]*serviceState
	backends map[backendKey]*backendState
	byID     map[uint32]*backendState
	svcIDs   idAllocator
	beIDs    idAllocator

	pol      policyMaps
	polNames *ebpf.Map

	writes atomic.Uint64
}

// Programs are the loaded programs, for callers that attach them their own way.
type Programs struct {
	SockConnect4, SockSendmsg4, SockRecvmsg4, SockGetpeername4, SockRelease *ebpf.Program
	PodIngress, PodEgress, NodeIngress, NodeEgress, TunnelIngress           *ebpf.Program
	TunnelEgress                                                            *ebpf.Program
}

// Load checks the kernel, loads the socket, pod and node programs with one shared set of maps
// pinned under cfg.PinDir (reusing maps already pinned there) and reads back the services the
// maps hold. Maps pinned with different sizes or layouts make Load fail; remove the pin
// directory to start afresh.
func Load(cfg Config) (_ *Datapath, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	if err := checkFeatures(); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}

	d := &Datapath{
		cfg:      cfg,
		log:      cfg.Logger,
		services: make(map[ServiceKey]*serviceState),
		backends: make(map[backendKey]*backendState),
		byID:     make(map[uint32]*backendState),
		svcIDs:   newIDAllocator(cfg.ServiceEntries),
		beIDs:    newIDAllocator(cfg.BackendEntries),
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()

	opts := &ebpf.CollectionOptions{
		Maps:  ebpf.MapOptions{PinPath: cfg.PinDir},
		Cache: btf.NewCache(),
	}
	sockSpec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("load sock spec: %w", err)
	}
	if err := cfg.apply(sockSpec); err != nil {
		return nil, err
	}
	if err := sockSpec.LoadAndAssign(&d.sock, opts); err != nil {
		return nil, fmt.Errorf("load socket programs: %w", err)
	}
	d.maglevInner = sockSpec.Maps[sockMapMaglevTables].InnerMap.Copy()

	podSpec, err := loadTcPod()
	if err != nil {
		return nil, fmt.Errorf("load tc pod spec: %w", err)
	}
	if err := cfg.apply(podSpec); err != nil {
		return nil, err
	}
	if err := podSpec.LoadAndAssign(&d.tcPod, opts); err != nil {
		return nil, fmt.Errorf("load tc pod programs: %w", err)
	}

	nodeSpec, err := loadTcNode()
	if err != nil {
		return nil, fmt.Errorf("load tc node spec: %w", err)
	}
	if err := cfg.apply(nodeSpec); err != nil {
		return nil, err
	}
	if err := nodeSpec.LoadAndAssign(&d.tcNode, opts); err != nil {
		return nil, fmt.Errorf("load tc node programs: %w", err)
	}

	if d.polNames, err = openPolicyNames(cfg.PinDir, cfg.PolicyIDs); err != nil {
		return nil, err
	}

	if err := d.restore(); err != nil {
		return nil, fmt.Errorf("read pinned services: %w", err)
	}
	d.log.Info("ebpf datapath loaded", "pin_dir", cfg.PinDir, "services", len(d.services),
		"backends", len(d.byID), "routing", cfg.Routing,
		"masquerade", cfg.Masquerade && cfg.ClusterCIDR.IsValid())
	return d, nil
}

// apply sets map sizes and load-time constants on one of the three specs. All three get the
// same values so they agree on the pinned maps.
func (c *Config) apply(spec *ebpf.CollectionSpec) error {
	sizes := map[string]int{
		sockMapServices:     c.ServiceEntries,
		sockMapRrState:      c.ServiceEntries,
		sockMapMaglevTables: c.ServiceEntries,
		sockMapBackends:     c.BackendEntries,
		sockMapBackendConns: c.BackendEntries,
		sockMapSvcSlots:     c.BackendEntries,
		sockMapCt4:          2 * c.Connections,
		sockMapSockRevnat4:  c.Connections,
		sockMapSockBackend:  c.Connections,
		sockMapAffinity4:    c.AffinityEntries,
		sockMapPolicyEps:    c.PolicyEndpoints,
		sockMapPolicyRules:  c.PolicyRules,
		sockMapPolicyPorts:  c.PolicyPorts,
		sockMapPolicyCounts: 2 * c.PolicyIDs,
		sockMapPolicyCt4:    2 * c.Connections,
	}
	for name, n := range sizes {
		m, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("map %s missing from spec", name)
		}
		m.MaxEntries = uint32(n)
	}

	var snat uint32
	if c.SNATAddr.IsValid() {
		snat = addrU32(c.SNATAddr)
	}
	var mode uint32
	if c.Routing == RoutingVXLAN {
		mode = routingModeVXLAN
	}
	var masq uint8
	if c.Masquerade && c.ClusterCIDR.IsValid() {
		masq = 1
	}
	var policyOnly uint8
	if c.PolicyOnly {
		policyOnly = 1
	}
	clusterAddr, clusterMask := prefixU32(c.ClusterCIDR)
	svcAddr, svcMask := prefixU32(c.ServiceCIDR)
	consts := map[string]any{
		sockVarCtTimeoutTcpNs:     uint64(c.TCPTimeout.Nanoseconds()),
		sockVarCtTimeoutCloseNs:   uint64(c.TCPCloseTimeout.Nanoseconds()),
		sockVarCtTimeoutUdpNs:     uint64(c.UDPTimeout.Nanoseconds()),
		sockVarLbHashSeed:         c.MaglevSeed,
		sockVarSnatFallbackAddr:   snat,
		sockVarSnatPortMin:        c.SNATPortMin,
		sockVarSnatPortMax:        c.SNATPortMax,
		sockVarRoutingMode:        mode,
		sockVarTunnelIfindex:      uint32(c.VXLANIfindex),
		sockVarTunnelVni:          c.VNI,
		sockVarMasquerade:         masq,
		sockVarClusterCidrAddr:    clusterAddr,
		sockVarClusterCidrMask:    clusterMask,
		sockVarServiceCidrAddr:    svcAddr,
		sockVarServiceCidrMask:    svcMask,
		sockVarPolicyEventsPerSec: uint32(max(c.PolicyEventsPerSec, 0)),
		sockVarPolicyOnly:         policyOnly,
	}
	for name, v := range consts {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("constant %s missing from spec", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set constant %s: %w", name, err)
		}
	}
	return nil
}

func checkFeatures() error {
	probes := []struct {
		what  string
		probe func() error
	}{
		{"v3 instruction set", features.HaveV3ISA},
		{"LRU hash maps", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"hash-of-maps", func() error { return features.HaveMapType(ebpf.HashOfMaps) }},
		{"bpf_loop", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnLoop) }},
		{"bpf_timer", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnTimerInit) }},
		{"bpf_redirect_neigh", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectNeigh) }},
		{"bpf_redirect_peer", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectPeer) }},
		{"LPM trie maps", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
		{"bpf_set_retval", func() error { return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval) }},
		{"cgroup sock programs", func() error { return features.HaveProgramType(ebpf.CGroupSock) }},
	}
	for _, p := range probes {
		if err := p.probe(); err != nil {
			return fmt.Errorf("probe %s: %w", p.what, err)
		}
	}
	return nil
}

// Programs returns the loaded programs.
func (d *Datapath) Programs() Programs {
	return Programs{
		SockConnect4:     d.sock.SockConnect4,
		SockSendmsg4:     d.sock.SockSendmsg4,
		SockRecvmsg4:     d.sock.SockRecvmsg4,
		SockGetpeername4: d.sock.SockGetpeername4,
		SockRelease:      d.sock.SockRelease,
		PodIngress:       d.tcPod.TcPodIngress,
		PodEgress:        d.tcPod.TcPodEgress,
		NodeIngress:      d.tcNode.TcNodeIngress,
		NodeEgress:       d.tcNode.TcNodeEgress,
		TunnelIngress:    d.tcNode.TcTunnelIngress,
		TunnelEgress:     d.tcNode.TcTunnelEgress,
	}
}

// Close releases the programs and map handles. Pinned maps, and programs still attached
// through links, stay in the kernel.
func (d *Datapath) Close() error {
	errs := []error{d.sock.Close(), d.tcPod.Close(), d.tcNode.Close()}
	if d.polNames != nil {
		errs = append(errs, d.polNames.Close())
	}
	return errors.Join(errs...)
}

// addrU32 returns an IPv4 address as the uint32 whose memory holds it in network order, the
// way the C structs store __be32.
func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// prefixU32 returns an IPv4 prefix as network address and mask in network order, zero for
// the zero Prefix.
func prefixU32(p netip.Prefix) (addr, mask uint32) {
	if !p.IsValid() {
		return 0, 0
	}
	p = p.Masked()
	m := netip.AddrFrom4([4]byte(net.CIDRMask(p.Bits(), 32)))
	return addrU32(p.Addr()), addrU32(m)
}

func u32Addr(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// portBE returns a port as the uint16 whose memory holds it in network order (__be16).
func portBE(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func portHost(v uint16) uint16 { return portBE(v) }
