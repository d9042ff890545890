// Package policy compiles Kubernetes NetworkPolicies, with the Pods and Namespaces they select,
// into per-endpoint longest-prefix-match rule tables for one node's dataplane. It is pure: no
// API access, no kernel, no state kept between calls.
package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Input is everything Compile needs. Slices may be in any order; Compile does not modify them.
type Input struct {
	NodeName   string
	Pods       []*v1.Pod
	Namespaces []*v1.Namespace
	Policies   []*networkingv1.NetworkPolicy
}

// State is the compiled policy of one node. It is deterministic (the same Input in any order
// gives a deeply equal State) and immutable: endpoints with the same policies may share one
// *Rules, so nothing may change a State after Compile returns it.
type State struct {
	// Endpoints are this node's pods (spec.nodeName == NodeName, not hostNetwork, with an IPv4
	// pod IP, not Succeeded or Failed), sorted by Addr, then Pod.
	Endpoints []Endpoint
	// Problems are the parts of policies that could not be applied, sorted by Policy then
	// Message. The rest of each policy is applied.
	Problems []Problem
}

// Endpoint is one local pod and what it may receive and send.
type Endpoint struct {
	Pod  types.NamespacedName
	Addr netip.Addr
	// Ingress and Egress are nil when no policy isolates the pod in that direction (all
	// allowed).
	Ingress, Egress *Rules
}

// Rules is the allowed set of one endpoint in one direction, as an LPM table keyed by the peer
// address: a peer takes the entry with the longest prefix containing it; no entry means deny.
type Rules struct {
	// Policies isolate the pod in this direction, sorted.
	Policies []types.NamespacedName
	// Entries have unique masked IPv4 prefixes, sorted by (Prefix.Addr(), Prefix.Bits()).
	// Entries that would give the same verdict as their nearest shorter entry are left out.
	Entries []Entry
}

// Entry is the verdict for peers whose longest matching prefix is Prefix.
type Entry struct {
	Prefix netip.Prefix
	// Any allows every protocol and port. AnyPolicy is the least policy granting it, for
	// counters.
	Any       bool
	AnyPolicy types.NamespacedName
	// Ports, when !Any, are the allowed ranges, merged per protocol and sorted by Protocol,
	// then First. !Any with no Ports denies: it carves an ipBlock except out of a shorter
	// prefix.
	Ports []PortRange
}

// PortRange allows destination ports First..Last (inclusive) of one protocol. A rule port
// without a number is 0..65535, so that port 0 packets match too.
type PortRange struct {
	Protocol    v1.Protocol // TCP, UDP or SCTP
	First, Last uint16
	// Policy is the least policy granting the range, for counters.
	Policy types.NamespacedName
}

// Problem is a part of a policy that was skipped.
type Problem struct {
	Policy  types.NamespacedName
	Message string // e.g. `spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "10.0.0/8"`
}

// Compile compiles the policies of in for the endpoints on in.NodeName.
func Compile(in Input) *State {
	c := newCluster(in)
	st := &State{}
	pols := compilePolicies(c, in.Policies, func(p Problem) { st.Problems = append(st.Problems, p) })
	slices.SortFunc(st.Problems, func(a, b Problem) int {
		return cmp.Or(cmpName(a.Policy, b.Policy), strings.Compare(a.Message, b.Message))
	})

	byNS := make(map[string][]*compiledPolicy)
	for _, p := range pols {
		byNS[p.name.Namespace] = append(byNS[p.name.Namespace], p)
	}
	// Pods of one workload are selected by the same policies and, mostly, declare the same
	// ports: they share one *Rules, compiled once.
	cache := make(map[string]*Rules)
	for i := range c.pods {
		pod := &c.pods[i]
		if pod.node != in.NodeName {
			continue
		}
		var ing, eg []*compiledPolicy
		for _, p := range byNS[pod.name.Namespace] {
			if !p.selector.Matches(pod.labels) {
				continue
			}
			if p.ingress {
				ing = append(ing, p)
			}
			if p.egress {
				eg = append(eg, p)
			}
		}
		st.Endpoints = append(st.Endpoints, Endpoint{
			Pod:     pod.name,
			Addr:    pod.addr,
			Ingress: c.cachedRules(cache, pod, ing, false),
			Egress:  c.cachedRules(cache, pod, eg, true),
		})
	}
	slices.SortFunc(st.Endpoints, func(a, b Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmpName(a.Pod, b.Pod))
	})
	return st
}

// cachedRules returns the rules of pod in one direction under pols (sorted), nil when pols is
// empty.
func (c *cluster) cachedRules(cache map[string]*Rules, pod *podInfo, pols []*compiledPolicy, egress bool) *Rules {
	if len(pols) == 0 {
		return nil
	}
	var key strings.Builder
	named := false
	if egress {
		key.WriteString("e")
	} else {
		key.WriteString("i")
	}
	for _, p := range pols {
		key.WriteByte(' ')
		key.WriteString(strconv.Itoa(p.index))
		named = named || p.namedIngress
	}
	// Ingress named ports resolve against the endpoint itself, so its ports are part of the
	// key; egress rules do not depend on the endpoint at all.
	if !egress && named {
		for _, cp := range pod.ports {
			if cp.Name != "" {
				key.WriteString("|" + cp.Name + "/" + string(cp.Protocol) + "/" + strconv.Itoa(int(cp.ContainerPort)))
			}
		}
	}
	if r, ok := cache[key.String()]; ok {
		return r
	}
	r := c.flatten(pod, pols, egress)
	cache[key.String()] = r
	return r
}

func cmpName(a, b types.NamespacedName) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}
