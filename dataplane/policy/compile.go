package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// compiledPolicy is a NetworkPolicy with its selectors parsed and its peers resolved to pods.
type compiledPolicy struct {
	index           int // in the sorted policy list; names a set of policies in cache keys
	name            types.NamespacedName
	selector        labels.Selector
	ingress, egress bool // the policy types
	in, out         []rule
	namedIngress    bool // some ingress rule has a named port
}

// rule is one ingress or egress rule. A rule whose peers or ports were all invalid is dropped,
// never widened to all peers or all ports.
type rule struct {
	policy  types.NamespacedName
	peers   []peer
	anyPort bool // no ports given: every protocol and port
	ports   []portSpec
	named   bool // some port is named
}

// peer is a set of addresses: the /32s of pods, or an IPv4 block less its excepts.
type peer struct {
	pods   []int // indices into cluster.pods, when !block
	block  bool
	cidr   netip.Prefix
	except []netip.Prefix
}

// portSpec is a rule port: a numeric range, or a name resolved against the destination pod.
type portSpec struct {
	proto       v1.Protocol
	first, last uint16
	name        string
}

// compilePolicies compiles the policies in namespace/name order, reporting what it skips.
func compilePolicies(c *cluster, in []*networkingv1.NetworkPolicy, report func(Problem)) []*compiledPolicy {
	nps := slices.DeleteFunc(slices.Clone(in), func(np *networkingv1.NetworkPolicy) bool { return np == nil })
	slices.SortFunc(nps, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name),
			strings.Compare(string(a.UID), string(b.UID)))
	})
	var out []*compiledPolicy
	for _, np := range nps {
		name := types.NamespacedName{Namespace: np.Namespace, Name: np.Name}
		pc := policyCompiler{c: c, name: name, report: func(format string, args ...any) {
			report(Problem{Policy: name, Message: fmt.Sprintf(format, args...)})
		}}
		if p := pc.compile(np); p != nil {
			p.index = len(out)
			out = append(out, p)
		}
	}
	return out
}

type policyCompiler struct {
	c      *cluster
	name   types.NamespacedName
	report func(format string, args ...any)
}

// compile returns nil when the policy's own podSelector is invalid: which pods it isolates is
// unknown, so it is reported and applies to none.
func (pc *policyCompiler) compile(np *networkingv1.NetworkPolicy) *compiledPolicy {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		pc.report("spec.podSelector: %v (policy ignored)", err)
		return nil
	}
	p := &compiledPolicy{name: pc.name, selector: sel}
	if len(np.Spec.PolicyTypes) == 0 {
		p.ingress, p.egress = true, len(np.Spec.Egress) > 0
	}
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.ingress = true
		case networkingv1.PolicyTypeEgress:
			p.egress = true
		default:
			pc.report("spec.policyTypes[%d]: unsupported value %q", i, t)
		}
	}
	if p.ingress {
		for i, r := range np.Spec.Ingress {
			if cr, ok := pc.rule(fmt.Sprintf("spec.ingress[%d]", i), "from", r.From, r.Ports); ok {
				p.in = append(p.in, cr)
				p.namedIngress = p.namedIngress || cr.named
			}
		}
	}
	if p.egress {
		for i, r := range np.Spec.Egress {
			if cr, ok := pc.rule(fmt.Sprintf("spec.egress[%d]", i), "to", r.To, r.Ports); ok {
				p.out = append(p.out, cr)
			}
		}
	}
	return p
}

// rule compiles one rule; ok is false when nothing of it is left.
func (pc *policyCompiler) rule(path, peerField string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (rule, bool) {
	r := rule{policy: pc.name, anyPort: len(ports) == 0}
	for i, pp := range ports {
		if ps, ok := pc.port(fmt.Sprintf("%s.ports[%d]", path, i), pp); ok {
			r.ports = append(r.ports, ps)
			r.named = r.named || ps.name != ""
		}
	}
	if len(peers) == 0 {
		r.peers = []peer{{block: true, cidr: netip.PrefixFrom(netip.IPv4Unspecified(), 0)}} // every address
	}
	for i, p := range peers {
		if cp, ok := pc.peer(fmt.Sprintf("%s.%s[%d]", path, peerField, i), p); ok {
			r.peers = append(r.peers, cp)
		}
	}
	return r, len(r.peers) > 0 && (r.anyPort || len(r.ports) > 0)
}

func (pc *policyCompiler) port(path string, pp networkingv1.NetworkPolicyPort) (portSpec, bool) {
	ps := portSpec{proto: v1.ProtocolTCP, first: 0, last: 65535}
	if pp.Protocol != nil {
		ps.proto = *pp.Protocol
	}
	switch ps.proto {
	case v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP:
	default:
		pc.report("%s.protocol: unsupported protocol %q", path, ps.proto)
		return ps, false
	}
	switch {
	case pp.Port == nil:
		if pp.EndPort != nil {
			pc.report("%s.endPort: may not be set without port", path)
			return ps, false
		}
	case pp.Port.Type == intstr.String:
		if pp.EndPort != nil {
			pc.report("%s.endPort: may not be set with named port %q", path, pp.Port.StrVal)
			return ps, false
		}
		if pp.Port.StrVal == "" {
			pc.report("%s.port: empty port name", path)
			return ps, false
		}
		ps.name = pp.Port.StrVal
	default:
		n := pp.Port.IntVal
		if n < 1 || n > 65535 {
			pc.report("%s.port: must be between 1 and 65535, got %d", path, n)
			return ps, false
		}
		last := n
		if pp.EndPort != nil {
			last = *pp.EndPort
			if last < n || last > 65535 {
				pc.report("%s.endPort: must be between port (%d) and 65535, got %d", path, n, last)
				return ps, false
			}
		}
		ps.first, ps.last = uint16(n), uint16(last)
	}
	return ps, true
}

func (pc *policyCompiler) peer(path string, p networkingv1.NetworkPolicyPeer) (peer, bool) {
	if p.IPBlock != nil {
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			pc.report("%s: ipBlock may not be combined with podSelector or namespaceSelector", path)
			return peer{}, false
		}
		return pc.block(path+".ipBlock", p.IPBlock)
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		pc.report("%s: must specify podSelector, namespaceSelector or ipBlock", path)
		return peer{}, false
	}
	// A nil selector parses to nil here: no podSelector is every pod, no namespaceSelector
	// is the policy's namespace.
	ok := true
	parse := func(field string, s *metav1.LabelSelector) labels.Selector {
		if s == nil {
			return nil
		}
		sel, err := metav1.LabelSelectorAsSelector(s)
		if err != nil {
			pc.report("%s.%s: %v", path, field, err)
			ok = false
		}
		return sel
	}
	podSel, nsSel := parse("podSelector", p.PodSelector), parse("namespaceSelector", p.NamespaceSelector)
	if !ok {
		return peer{}, false
	}
	if podSel == nil {
		podSel = labels.Everything()
	}
	c := pc.c
	var out peer
	match := func(ns string) {
		for _, i := range c.byNS[ns] {
			if podSel.Matches(c.pods[i].labels) {
				out.pods = append(out.pods, i)
			}
		}
	}
	if nsSel == nil {
		match(pc.name.Namespace) // a podSelector alone: the policy's namespace
	} else {
		for _, ns := range c.nsNames {
			if nsSel.Matches(c.nsLabels[ns]) {
				match(ns)
			}
		}
	}
	return out, true
}

// block compiles an ipBlock. IPv6 is ignored without a Problem: the dataplane is IPv4-only,
// and a dual-stack policy is not wrong.
func (pc *policyCompiler) block(path string, b *networkingv1.IPBlock) (peer, bool) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		pc.report("%s.cidr: invalid CIDR %q", path, b.CIDR)
		return peer{}, false
	}
	if !cidr.Addr().Is4() {
		return peer{}, false
	}
	out := peer{block: true, cidr: cidr.Masked()}
	for i, s := range b.Except {
		e, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			pc.report("%s.except[%d]: invalid CIDR %q", path, i, s)
		case !e.Addr().Is4():
		case e.Bits() < out.cidr.Bits() || !out.cidr.Contains(e.Addr()):
			pc.report("%s.except[%d]: %q is not within cidr %q (except ignored)", path, i, s, b.CIDR)
		default:
			out.except = append(out.except, e.Masked())
		}
	}
	return out, true
}

// excludes reports whether p lies inside one of the excepts.
func (pe *peer) excludes(p netip.Prefix) bool {
	for _, e := range pe.except {
		if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
			return true
		}
	}
	return false
}
