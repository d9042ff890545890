package ebpf

import (
	"fmt"
	"net/netip"
	"time"
)

// Protocol is a service's transport protocol. A port number may be a service on both.
type Protocol uint8

const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132 // policy only: services are TCP and UDP
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	case 1:
		return "ICMP"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Algorithm is a service's load-balancing algorithm (the lb_algo enum in bpf/lib/maps.h).
type Algorithm uint8

const (
	// Random picks a uniformly random ready backend per connection. The default.
	Random Algorithm = 0
	// RoundRobin cycles through the ready backends, shared by all CPUs of a node.
	RoundRobin Algorithm = 1
	// LeastConn picks a ready backend with the fewest active connections, as counted in BPF.
	LeastConn Algorithm = 2
	// SourceHash maps each client to a backend through a Maglev table.
	SourceHash Algorithm = 3
)

var algorithmNames = [...]string{"random", "round-robin", "least-conn", "source-hash"}

func (a Algorithm) String() string {
	if int(a) < len(algorithmNames) {
		return algorithmNames[a]
	}
	return fmt.Sprintf("Algorithm(%d)", uint8(a))
}

// ParseAlgorithm maps "random", "round-robin", "least-conn" or "source-hash" (and "" for the
// default) to an Algorithm.
func ParseAlgorithm(s string) (Algorithm, error) {
	if s == "" {
		return Random, nil
	}
	for i, n := range algorithmNames {
		if n == s {
			return Algorithm(i), nil
		}
	}
	return 0, fmt.Errorf("unknown load-balancing algorithm %q", s)
}

// ServiceKey is a service frontend: a ClusterIP, external or load-balancer address with a port,
// or a NodePort when Addr is the zero Addr (it then matches any address given to SetNodeAddrs).
type ServiceKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto Protocol
	// Internal marks the second entry of an ExternalLocal frontend: the one traffic from this
	// node and its pods takes, with every endpoint of the cluster, as kube-proxy sends such
	// traffic to the service's cluster-wide endpoints (its "short circuit").
	Internal bool
}

// NodePort reports whether k is a NodePort frontend.
func (k ServiceKey) NodePort() bool { return !k.Addr.IsValid() || k.Addr.IsUnspecified() }

func (k ServiceKey) String() string {
	scope := ""
	if k.Internal {
		scope = "/internal"
	}
	if k.NodePort() {
		return fmt.Sprintf("nodeport:%d/%s%s", k.Port, k.Proto, scope)
	}
	return fmt.Sprintf("%s/%s%s", netip.AddrPortFrom(k.Addr, k.Port), k.Proto, scope)
}

// Service is one frontend and how it balances.
type Service struct {
	ServiceKey
	Algorithm Algorithm
	// ExternalLocal is externalTrafficPolicy Local: the client address is kept (no SNAT) and
	// the caller passes only this node's endpoints.
	ExternalLocal bool
	// AffinityTimeout > 0 is sessionAffinity ClientIP with that timeout (whole seconds).
	AffinityTimeout time.Duration
}

// Backend is one endpoint of a service.
type Backend struct {
	Addr netip.Addr
	Port uint16
	// Terminating backends keep their existing connections but get no new ones.
	Terminating bool
}

func (b Backend) String() string { return netip.AddrPortFrom(b.Addr, b.Port).String() }
