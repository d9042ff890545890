// Package dataplane turns Services, EndpointSlices and Nodes into an immutable desired-state
// snapshot (State) and hands it to a Backend that makes the kernel match it, through a
// rate-limited sync runner. It holds no kernel details; backends live in subpackages.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// AlgorithmAnnotation on a Service selects its load-balancing algorithm.
const AlgorithmAnnotation = "lb.capstan.io/algorithm"

// Load-balancing algorithms, as written in AlgorithmAnnotation.
const (
	AlgorithmRandom     = "random"
	AlgorithmRoundRobin = "round-robin"
	AlgorithmLeastConn  = "least-conn"
	AlgorithmSourceHash = "source-hash"
)

// ValidAlgorithm reports whether s names a load-balancing algorithm.
func ValidAlgorithm(s string) bool {
	switch s {
	case AlgorithmRandom, AlgorithmRoundRobin, AlgorithmLeastConn, AlgorithmSourceHash:
		return true
	}
	return false
}

// Backend makes the kernel match a State. Sync is full-state and idempotent: it may be called
// any number of times with the same State, and must remove what the State no longer holds.
type Backend interface {
	Sync(ctx context.Context, st *State) error
}

// ServicePortName names one port of one Service, as kube-proxy does.
type ServicePortName struct {
	types.NamespacedName
	Port     string
	Protocol v1.Protocol
}

func (n ServicePortName) String() string {
	return fmt.Sprintf("%s:%s/%s", n.NamespacedName, n.Port, n.Protocol)
}

func (n ServicePortName) compare(o ServicePortName) int {
	if c := cmpStr(n.Namespace, o.Namespace); c != 0 {
		return c
	}
	if c := cmpStr(n.Name, o.Name); c != 0 {
		return c
	}
	if c := cmpStr(n.Port, o.Port); c != 0 {
		return c
	}
	return cmpStr(string(n.Protocol), string(o.Protocol))
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Endpoint is one address of an EndpointSlice for one service port, with its conditions.
type Endpoint struct {
	Addr     netip.Addr
	Port     uint16
	NodeName string
	// Ready is the slice's condition as is: a terminating endpoint is ready only when its
	// Service publishes not-ready addresses.
	Ready, Serving, Terminating bool
}

// Target is where a frontend forwards. Usable targets take new connections; the others are
// terminating endpoints that only keep the connections they already have.
type Target struct {
	Addr   netip.Addr
	Port   uint16
	Usable bool
	// Ready is a ready endpoint, not one usable only because it is the last serving and
	// terminating one: health checks count these.
	Ready bool
}

// ServicePort is one port of a Service with everything a backend needs to program it.
type ServicePort struct {
	Name        ServicePortName
	ClusterIPs  []netip.Addr
	Port        uint16
	Protocol    v1.Protocol
	NodePort    uint16 // 0 when none
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are status.loadBalancer.ingress IPs in VIP mode (Proxy mode ones are
	// the load balancer's business, as in kube-proxy).
	LoadBalancerIPs []netip.Addr
	// ExternalPolicyLocal is externalTrafficPolicy Local on a service reachable from outside:
	// NodePort, external and load-balancer frontends keep the client address and use this
	// node's endpoints only.
	ExternalPolicyLocal bool
	HealthCheckNodePort uint16
	// InternalPolicyLocal is internalTrafficPolicy Local: ClusterIPs use local endpoints only.
	InternalPolicyLocal bool
	// AffinityTimeout > 0 is sessionAffinity ClientIP with that timeout.
	AffinityTimeout time.Duration
	Algorithm       string

	// Endpoints are all known endpoints of the port, sorted by address and port.
	Endpoints []Endpoint
	// ClusterTargets serve the ClusterIPs, ExternalTargets the NodePort, external and
	// load-balancer IPs. Usable ones first, each part sorted.
	ClusterTargets, ExternalTargets []Target
}

// Route sends a remote node's pod CIDR to that node.
type Route struct {
	Node    string
	PodCIDR netip.Prefix
	NodeIP  netip.Addr
}

// State is a desired-state snapshot. It is immutable: nothing may change it after Snapshot
// returns it, so it may be shared by goroutines and kept across syncs.
type State struct {
	NodeName string
	// NodeAddrs are this node's addresses, where NodePorts answer.
	NodeAddrs []netip.Addr
	// Services are sorted by name.
	Services []*ServicePort
	// Routes lead to the other nodes' pod CIDRs, sorted by node and CIDR.
	Routes []Route
}

// Service returns the named service port, or nil.
func (s *State) Service(name ServicePortName) *ServicePort {
	i, ok := slices.BinarySearchFunc(s.Services, name, func(sp *ServicePort, n ServicePortName) int {
		return sp.Name.compare(n)
	})
	if !ok {
		return nil
	}
	return s.Services[i]
}

// targets chooses where new and existing connections go, as kube-proxy does: ready endpoints
// take new connections; if there are none, serving terminating endpoints do (so a rolling
// update of the last pod does not black-hole traffic); other terminating endpoints keep only
// their existing connections. Endpoints neither ready nor terminating are left out.
func targets(eps []Endpoint, localOnly bool, node string) []Target {
	var ready, servingTerm, term []Endpoint
	for _, e := range eps {
		if localOnly && e.NodeName != node {
			continue
		}
		switch {
		case e.Ready:
			ready = append(ready, e)
		case e.Terminating && e.Serving:
			servingTerm = append(servingTerm, e)
			term = append(term, e)
		case e.Terminating:
			term = append(term, e)
		}
	}
	usable := ready
	if len(usable) == 0 {
		usable = servingTerm
	}
	out := make([]Target, 0, len(usable)+len(term))
	for _, e := range usable {
		out = append(out, Target{Addr: e.Addr, Port: e.Port, Usable: true, Ready: e.Ready})
	}
	for _, e := range term {
		if len(ready) == 0 && e.Serving {
			continue // already usable
		}
		out = append(out, Target{Addr: e.Addr, Port: e.Port})
	}
	return out
}

// Backends syncs several backends in turn (the eBPF maps, health-check ports, ...). One that
// fails does not hold the others back; the errors are returned together.
type Backends []Backend

// Sync syncs every backend.
func (bs Backends) Sync(ctx context.Context, st *State) error {
	var errs []error
	for _, b := range bs {
		if err := b.Sync(ctx, st); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
