package policy

import (
	"cmp"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/types"
)

// grant accumulates the verdict of one prefix.
type grant struct {
	any       bool
	anyPolicy types.NamespacedName
	ports     []PortRange // unmerged; dropped once any
}

func (g *grant) allowAny(policy types.NamespacedName) {
	if !g.any || cmpName(policy, g.anyPolicy) < 0 {
		g.any, g.anyPolicy = true, policy
	}
	g.ports = nil
}

func (g *grant) allowPorts(ports []PortRange) {
	if !g.any {
		g.ports = append(g.ports, ports...)
	}
}

// flatten compiles the rules of pols for pod in one direction into an LPM table.
//
// Every prefix a rule names (peer pod /32s, ipBlock cidrs and excepts, and for egress named
// ports the /32s of the pods an ipBlock covers, which carry those pods' ports) gets an entry.
// Collected prefixes are nested or disjoint, so the addresses that take entry P (P less its
// longer entries) lie in a block "cidr less excepts" exactly when P is inside the cidr and
// inside no except; in a pod peer exactly when P is that pod's /32. Each entry is the union
// of what those rules allow.
func (c *cluster) flatten(pod *podInfo, pols []*compiledPolicy, egress bool) *Rules {
	out := &Rules{}
	var rules []*rule
	for _, p := range pols {
		out.Policies = append(out.Policies, p.name)
		rs := p.in
		if egress {
			rs = p.out
		}
		for i := range rs {
			rules = append(rules, &rs[i])
		}
	}

	seen := make(map[netip.Prefix]int)
	var prefixes []netip.Prefix
	add := func(p netip.Prefix) {
		if _, ok := seen[p]; !ok {
			seen[p] = 0
			prefixes = append(prefixes, p)
		}
	}
	for _, r := range rules {
		for i := range r.peers {
			pe := &r.peers[i]
			if !pe.block {
				for _, j := range pe.pods {
					add(netip.PrefixFrom(c.pods[j].addr, 32))
				}
				continue
			}
			add(pe.cidr)
			for _, e := range pe.except {
				add(e)
			}
			if egress && r.named {
				for _, j := range c.podsIn(pe.cidr) {
					if p := netip.PrefixFrom(c.pods[j].addr, 32); !pe.excludes(p) {
						add(p)
					}
				}
			}
		}
	}
	// (Addr, Bits) order lists a prefix before the prefixes inside it: a pre-order walk of the
	// prefix tree.
	slices.SortFunc(prefixes, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	for i, p := range prefixes {
		seen[p] = i
	}

	grants := make([]grant, len(prefixes))
	var static, named []PortRange
	var one [1]int
	for _, r := range rules {
		// static is what the rule allows at every address it covers: numeric ports, and for
		// ingress named ports resolved against the endpoint (the destination).
		static = static[:0]
		for _, ps := range r.ports {
			switch {
			case ps.name == "":
				static = append(static, PortRange{Protocol: ps.proto, First: ps.first, Last: ps.last, Policy: r.policy})
			case !egress:
				static = pod.namedPort(static, ps.name, ps.proto, r.policy)
			}
		}
		if !r.anyPort && len(static) == 0 && !(egress && r.named) {
			continue // every named port resolved to nothing
		}
		// allow grants the rule at prefix i; dests are the pods there that egress named ports
		// resolve against.
		allow := func(i int, dests []int) {
			g := &grants[i]
			if r.anyPort {
				g.allowAny(r.policy)
				return
			}
			g.allowPorts(static)
			if !egress || !r.named || g.any {
				return
			}
			for _, d := range dests {
				named = named[:0]
				for _, ps := range r.ports {
					if ps.name != "" {
						named = c.pods[d].namedPort(named, ps.name, ps.proto, r.policy)
					}
				}
				g.allowPorts(named)
			}
		}
		for k := range r.peers {
			pe := &r.peers[k]
			if !pe.block {
				for _, j := range pe.pods {
					one[0] = j // the pod itself, not others that may share its address
					allow(seen[netip.PrefixFrom(c.pods[j].addr, 32)], one[:])
				}
				continue
			}
			// The prefixes inside the cidr follow it, up to the first address outside.
			for i := seen[pe.cidr]; i < len(prefixes) && pe.cidr.Contains(prefixes[i].Addr()); i++ {
				p := prefixes[i]
				if pe.excludes(p) {
					continue
				}
				var dests []int
				if p.Bits() == 32 && egress && r.named {
					dests = c.podsIn(p)
				}
				allow(i, dests)
			}
		}
	}

	// Leave out entries that give the verdict of their nearest kept ancestor (or the default
	// deny): LPM then falls through to an equal verdict.
	var stack []int // indices into out.Entries of the kept ancestors of the current prefix
	for i, p := range prefixes {
		e := grants[i].entry(p)
		for len(stack) > 0 {
			top := out.Entries[stack[len(stack)-1]].Prefix
			if top.Bits() <= p.Bits() && top.Contains(p.Addr()) {
				break
			}
			stack = stack[:len(stack)-1]
		}
		var parent Entry
		if len(stack) > 0 {
			parent = out.Entries[stack[len(stack)-1]]
		}
		if sameVerdict(e, parent) {
			continue
		}
		stack = append(stack, len(out.Entries))
		out.Entries = append(out.Entries, e)
	}
	return out
}

func (g *grant) entry(p netip.Prefix) Entry {
	if g.any {
		return Entry{Prefix: p, Any: true, AnyPolicy: g.anyPolicy}
	}
	return Entry{Prefix: p, Ports: mergePorts(g.ports)}
}

func sameVerdict(a, b Entry) bool {
	return a.Any == b.Any && a.AnyPolicy == b.AnyPolicy && slices.Equal(a.Ports, b.Ports)
}

// mergePorts sorts the ranges by protocol and first port and joins overlapping or adjacent
// ranges of one protocol, keeping the least policy of the joined parts. It reuses rs.
func mergePorts(rs []PortRange) []PortRange {
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b PortRange) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.First, b.First),
			cmp.Compare(a.Last, b.Last), cmpName(a.Policy, b.Policy))
	})
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if r.Protocol != last.Protocol || int(r.First) > int(last.Last)+1 {
			out = append(out, r)
			continue
		}
		last.Last = max(last.Last, r.Last)
		if cmpName(r.Policy, last.Policy) < 0 {
			last.Policy = r.Policy
		}
	}
	return slices.Clip(out)
}
