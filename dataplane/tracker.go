package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// Labels kube-proxy honours: a service claimed by another proxy, and headless slices, are
// not ours to program.
const (
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	labelHeadless         = "service.kubernetes.io/headless"
)

// TrackerConfig is what a Tracker needs.
type TrackerConfig struct {
	// NodeName is the node this dataplane runs on: it decides which endpoints are local.
	NodeName string
	// DefaultAlgorithm is used when a Service has no valid algorithm annotation.
	DefaultAlgorithm string
	// NodeAddrs, when set, replace the addresses read from this node's Node object.
	NodeAddrs []netip.Addr
	// Recorder receives a Warning event for a Service with an unknown algorithm.
	Recorder record.EventRecorder
	// Changed is called after every change that alters the next Snapshot (e.g. a runner's
	// Trigger). It must not block.
	Changed func()
	Logger  *slog.Logger
}

// Tracker follows Services, EndpointSlices and Nodes, converting each object when it changes
// (like kube-proxy's change trackers) so a Snapshot only merges ready-made pieces.
type Tracker struct {
	cfg TrackerConfig
	log *slog.Logger

	// synced report whether each handler has seen its informer's initial list.
	synced []cache.InformerSynced

	mu       sync.Mutex
	services map[types.NamespacedName][]*ServicePort // ports without endpoints
	// slices holds each EndpointSlice's endpoints per port, keyed by service then slice name.
	slices map[types.NamespacedName]map[string]map[portKey][]Endpoint
	nodes  map[string]nodeInfo
}

type portKey struct {
	name  string
	proto v1.Protocol
}

type nodeInfo struct {
	addrs    []netip.Addr // InternalIP first, then ExternalIP
	podCIDRs []netip.Prefix
}

// NewTracker returns an empty tracker.
func NewTracker(cfg TrackerConfig) (*Tracker, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("new tracker: node name is required")
	}
	if cfg.DefaultAlgorithm == "" {
		cfg.DefaultAlgorithm = AlgorithmRandom
	}
	if !ValidAlgorithm(cfg.DefaultAlgorithm) {
		return nil, fmt.Errorf("new tracker: unknown default algorithm %q", cfg.DefaultAlgorithm)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	return &Tracker{
		cfg:      cfg,
		log:      cfg.Logger,
		services: make(map[types.NamespacedName][]*ServicePort),
		slices:   make(map[types.NamespacedName]map[string]map[portKey][]Endpoint),
		nodes:    make(map[string]nodeInfo),
	}, nil
}

// Register adds the tracker's handlers to the factory's Service, EndpointSlice and Node
// informers. Start the factory and wait for HasSynced before the first Snapshot, or the
// first sync would delete everything a restarted daemon left in place.
func (t *Tracker) Register(f informers.SharedInformerFactory) error {
	handlers := []struct {
		what string
		inf  cache.SharedIndexInformer
		h    cache.ResourceEventHandlerFuncs
	}{
		{"services", f.Core().V1().Services().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { t.OnService(nil, asService(o)) },
			UpdateFunc: func(old, o any) { t.OnService(asService(old), asService(o)) },
			DeleteFunc: func(o any) { t.OnServiceDelete(asService(o)) },
		}},
		{"endpointslices", f.Discovery().V1().EndpointSlices().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { t.OnEndpointSlice(asSlice(o)) },
			UpdateFunc: func(_, o any) { t.OnEndpointSlice(asSlice(o)) },
			DeleteFunc: func(o any) { t.OnEndpointSliceDelete(asSlice(o)) },
		}},
		{"nodes", f.Core().V1().Nodes().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { t.OnNode(asNode(o)) },
			UpdateFunc: func(_, o any) { t.OnNode(asNode(o)) },
			DeleteFunc: func(o any) { t.OnNodeDelete(asNode(o)) },
		}},
	}
	for _, h := range handlers {
		reg, err := h.inf.AddEventHandler(h.h)
		if err != nil {
			return fmt.Errorf("watch %s: %w", h.what, err)
		}
		t.synced = append(t.synced, reg.HasSynced)
	}
	return nil
}

// HasSynced reports whether the tracker has been given every object of the informers'
// initial lists. A synced informer cache is not enough: handlers are called after the cache
// is filled, asynchronously.
func (t *Tracker) HasSynced() bool {
	if len(t.synced) == 0 {
		return false
	}
	for _, s := range t.synced {
		if !s() {
			return false
		}
	}
	return true
}

// unwrap returns the object inside a delete tombstone.
func unwrap(o any) any {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return o
}

func asService(o any) *v1.Service {
	s, _ := unwrap(o).(*v1.Service)
	return s
}

func asSlice(o any) *discovery.EndpointSlice {
	s, _ := unwrap(o).(*discovery.EndpointSlice)
	return s
}

func asNode(o any) *v1.Node {
	n, _ := unwrap(o).(*v1.Node)
	return n
}

// OnService records an added (old nil) or updated Service.
func (t *Tracker) OnService(old, svc *v1.Service) {
	if svc == nil {
		return
	}
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	ports := t.convertService(old, svc)
	t.mu.Lock()
	prev, had := t.services[name]
	same := had && reflect.DeepEqual(prev, ports)
	if len(ports) == 0 {
		delete(t.services, name)
	} else {
		t.services[name] = ports
	}
	t.mu.Unlock()
	if !same && (had || len(ports) > 0) {
		t.cfg.Changed()
	}
}

// OnServiceDelete records a deleted Service.
func (t *Tracker) OnServiceDelete(svc *v1.Service) {
	if svc == nil {
		return
	}
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	t.mu.Lock()
	_, had := t.services[name]
	delete(t.services, name)
	t.mu.Unlock()
	if had {
		t.cfg.Changed()
	}
}

// convertService turns a Service into its ports, or nil for one no proxy programs.
func (t *Tracker) convertService(old, svc *v1.Service) []*ServicePort {
	if _, ok := svc.Labels[labelServiceProxyName]; ok {
		return nil
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return nil // headless: DNS only
	}
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}

	algo := t.cfg.DefaultAlgorithm
	if a, ok := svc.Annotations[AlgorithmAnnotation]; ok {
		if ValidAlgorithm(a) {
			algo = a
		} else {
			t.warnAlgorithm(old, svc, a)
		}
	}

	clusterIPs := parseAddrs(svc.Spec.ClusterIPs)
	if len(clusterIPs) == 0 {
		clusterIPs = parseAddrs([]string{svc.Spec.ClusterIP})
	}
	externalIPs := parseAddrs(svc.Spec.ExternalIPs)
	var lbIPs []netip.Addr
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy {
				continue
			}
			lbIPs = append(lbIPs, parseAddrs([]string{ing.IP})...)
		}
	}
	external := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer ||
		len(externalIPs) > 0
	extLocal := external && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	intLocal := svc.Spec.InternalTrafficPolicy != nil &&
		*svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	var affinity time.Duration
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		secs := int32(v1.DefaultClientIPServiceAffinitySeconds)
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			secs = *c.ClientIP.TimeoutSeconds
		}
		affinity = time.Duration(secs) * time.Second
	}
	var hc uint16
	if extLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		hc = uint16(svc.Spec.HealthCheckNodePort)
	}

	ports := make([]*ServicePort, 0, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		sp := &ServicePort{
			Name:                ServicePortName{NamespacedName: name, Port: p.Name, Protocol: proto},
			ClusterIPs:          clusterIPs,
			Port:                uint16(p.Port),
			Protocol:            proto,
			ExternalIPs:         externalIPs,
			LoadBalancerIPs:     lbIPs,
			ExternalPolicyLocal: extLocal,
			HealthCheckNodePort: hc,
			InternalPolicyLocal: intLocal,
			AffinityTimeout:     affinity,
			Algorithm:           algo,
		}
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			sp.NodePort = uint16(p.NodePort)
		}
		ports = append(ports, sp)
	}
	return ports
}

// warnAlgorithm reports an unknown algorithm once per change of the annotation, not on every
// unrelated update of the Service.
func (t *Tracker) warnAlgorithm(old, svc *v1.Service, value string) {
	if old != nil && old.Annotations[AlgorithmAnnotation] == value {
		return
	}
	t.log.Warn("unknown load-balancing algorithm, using the default", "service",
		svc.Namespace+"/"+svc.Name, "algorithm", value, "default", t.cfg.DefaultAlgorithm)
	if t.cfg.Recorder != nil {
		t.cfg.Recorder.Eventf(svc, v1.EventTypeWarning, "UnknownLoadBalancingAlgorithm",
			"annotation %s=%q is not one of random, round-robin, least-conn, source-hash; using %s",
			AlgorithmAnnotation, value, t.cfg.DefaultAlgorithm)
	}
}

func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func sliceOwner(s *discovery.EndpointSlice) (types.NamespacedName, bool) {
	svc := s.Labels[discovery.LabelServiceName]
	if svc == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: s.Namespace, Name: svc}, true
}

// OnEndpointSlice records an added or updated EndpointSlice.
func (t *Tracker) OnEndpointSlice(s *discovery.EndpointSlice) {
	if s == nil {
		return
	}
	owner, ok := sliceOwner(s)
	if !ok {
		return
	}
	var eps map[portKey][]Endpoint
	_, headless := s.Labels[labelHeadless]
	_, other := s.Labels[labelServiceProxyName]
	if !headless && !other && s.AddressType != discovery.AddressTypeFQDN {
		eps = convertSlice(s)
	}
	t.mu.Lock()
	bySlice := t.slices[owner]
	prev, had := bySlice[s.Name]
	same := had && reflect.DeepEqual(prev, eps)
	if eps == nil {
		delete(bySlice, s.Name)
		if len(bySlice) == 0 {
			delete(t.slices, owner)
		}
	} else {
		if bySlice == nil {
			bySlice = make(map[string]map[portKey][]Endpoint)
			t.slices[owner] = bySlice
		}
		bySlice[s.Name] = eps
	}
	t.mu.Unlock()
	if !same && (had || eps != nil) {
		t.cfg.Changed()
	}
}

// OnEndpointSliceDelete records a deleted EndpointSlice.
func (t *Tracker) OnEndpointSliceDelete(s *discovery.EndpointSlice) {
	if s == nil {
		return
	}
	owner, ok := sliceOwner(s)
	if !ok {
		return
	}
	t.mu.Lock()
	_, had := t.slices[owner][s.Name]
	delete(t.slices[owner], s.Name)
	if len(t.slices[owner]) == 0 {
		delete(t.slices, owner)
	}
	t.mu.Unlock()
	if had {
		t.cfg.Changed()
	}
}

func convertSlice(s *discovery.EndpointSlice) map[portKey][]Endpoint {
	out := make(map[portKey][]Endpoint, len(s.Ports))
	for _, p := range s.Ports {
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			continue
		}
		k := portKey{proto: v1.ProtocolTCP}
		if p.Name != nil {
			k.name = *p.Name
		}
		if p.Protocol != nil {
			k.proto = *p.Protocol
		}
		eps := []Endpoint{}
		for _, e := range s.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			// Like kube-proxy, only the first address counts: the others are the same pod.
			addr, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				continue
			}
			// Unset conditions mean ready and serving, per the EndpointSlice API. A
			// terminating endpoint the slice calls ready (its Service publishes not-ready
			// addresses) is ready, as kube-proxy takes it.
			term := e.Conditions.Terminating != nil && *e.Conditions.Terminating
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			serving := e.Conditions.Serving == nil || *e.Conditions.Serving
			ep := Endpoint{Addr: addr.Unmap(), Port: uint16(*p.Port), Ready: ready, Serving: serving, Terminating: term}
			if e.NodeName != nil {
				ep.NodeName = *e.NodeName
			}
			eps = append(eps, ep)
		}
		out[k] = append(out[k], eps...)
	}
	return out
}

// OnNode records an added or updated Node.
func (t *Tracker) OnNode(n *v1.Node) {
	if n == nil {
		return
	}
	var info nodeInfo
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type == typ {
				info.addrs = append(info.addrs, parseAddrs([]string{a.Address})...)
			}
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			info.podCIDRs = append(info.podCIDRs, p.Masked())
		}
	}
	t.mu.Lock()
	prev, had := t.nodes[n.Name]
	t.nodes[n.Name] = info
	t.mu.Unlock()
	if !had || !reflect.DeepEqual(prev, info) {
		t.cfg.Changed()
	}
}

// OnNodeDelete records a deleted Node.
func (t *Tracker) OnNodeDelete(n *v1.Node) {
	if n == nil {
		return
	}
	t.mu.Lock()
	_, had := t.nodes[n.Name]
	delete(t.nodes, n.Name)
	t.mu.Unlock()
	if had {
		t.cfg.Changed()
	}
}

// Snapshot merges what the tracker holds into a new State that shares nothing mutable with
// the tracker.
func (t *Tracker) Snapshot() *State {
	t.mu.Lock()
	defer t.mu.Unlock()
	node := t.cfg.NodeName
	st := &State{NodeName: node}

	if len(t.cfg.NodeAddrs) > 0 {
		st.NodeAddrs = slices.Clone(t.cfg.NodeAddrs)
	} else {
		st.NodeAddrs = slices.Clone(t.nodes[node].addrs)
	}
	for name, n := range t.nodes {
		if name == node || len(n.addrs) == 0 {
			continue
		}
		for _, c := range n.podCIDRs {
			st.Routes = append(st.Routes, Route{Node: name, PodCIDR: c, NodeIP: n.addrs[0]})
		}
	}
	slices.SortFunc(st.Routes, func(a, b Route) int {
		if c := cmpStr(a.Node, b.Node); c != 0 {
			return c
		}
		return a.PodCIDR.Addr().Compare(b.PodCIDR.Addr())
	})

	for name, ports := range t.services {
		for _, p := range ports {
			sp := *p
			sp.Endpoints = t.endpointsLocked(name, portKey{name: p.Name.Port, proto: p.Protocol})
			sp.ClusterTargets = targets(sp.Endpoints, sp.InternalPolicyLocal, node)
			sp.ExternalTargets = targets(sp.Endpoints, sp.ExternalPolicyLocal, node)
			st.Services = append(st.Services, &sp)
		}
	}
	slices.SortFunc(st.Services, func(a, b *ServicePort) int { return a.Name.compare(b.Name) })
	return st
}

// endpointsLocked merges one port's endpoints from all the service's slices, dropping
// duplicates (an endpoint may briefly sit in two slices while the controller moves it).
func (t *Tracker) endpointsLocked(svc types.NamespacedName, k portKey) []Endpoint {
	names := make([]string, 0, len(t.slices[svc]))
	for n := range t.slices[svc] {
		names = append(names, n)
	}
	slices.Sort(names) // first slice wins a duplicate, whatever the map order
	seen := make(map[netip.AddrPort]bool)
	var out []Endpoint
	for _, n := range names {
		for _, e := range t.slices[svc][n][k] {
			ap := netip.AddrPortFrom(e.Addr, e.Port)
			if seen[ap] {
				continue
			}
			seen[ap] = true
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	return out
}
