package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// randomInput is a small random cluster whose addresses crowd a few nested blocks, so that
// ipBlocks, excepts and pod /32s overlap in every way.
func randomInput(r *rand.Rand, npods, npolicies int) Input {
	in := Input{NodeName: "n1"}
	nss := []string{"ns0", "ns1", "ns2"} // ns2 has no Namespace object
	for _, ns := range nss[:2] {
		in.Namespaces = append(in.Namespaces, mkNS(ns, map[string]string{"env": pick(r, "p", "d")}))
	}
	used := map[netip.Addr]bool{}
	for i := range npods {
		var addr netip.Addr
		for addr = randAddr(r); used[addr]; addr = randAddr(r) {
		}
		used[addr] = true
		var ports []v1.ContainerPort
		if r.IntN(2) == 0 {
			ports = append(ports, cport("http", int32(pick(r, 80, 8080)), tcp))
		}
		if r.IntN(2) == 0 {
			ports = append(ports, cport("dns", 53, udp))
		}
		if r.IntN(3) == 0 {
			ports = append(ports, cport("alt", int32(8000+r.IntN(200)), ""))
		}
		p := mkPod(fmt.Sprintf("%s/pod%d", pick(r, nss...), i), addr.String(), pick(r, "n1", "n2"),
			map[string]string{"app": pick(r, "a", "b", "c"), "tier": pick(r, "x", "y")}, ports...)
		switch r.IntN(12) {
		case 0:
			p.Spec.HostNetwork = true
		case 1:
			p.Status.Phase = v1.PodFailed
		}
		in.Pods = append(in.Pods, p)
	}
	for i := range npolicies {
		spec := networkingv1.NetworkPolicySpec{PodSelector: *randSel(r)}
		switch r.IntN(4) {
		case 1:
			spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		case 2:
			spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		case 3:
			spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}
		for range r.IntN(3) {
			spec.Ingress = append(spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: randPeers(r), Ports: randPorts(r)})
		}
		for range r.IntN(3) {
			spec.Egress = append(spec.Egress, networkingv1.NetworkPolicyEgressRule{To: randPeers(r), Ports: randPorts(r)})
		}
		in.Policies = append(in.Policies, mkPolicy(fmt.Sprintf("%s/pol%d", pick(r, nss...), i), spec))
	}
	return in
}

func pick[T any](r *rand.Rand, vs ...T) T { return vs[r.IntN(len(vs))] }

// blocks nest: 10/8 > 10.0/22 > 10.0.1/24 > 10.0.1.128/25 > 10.0.1.192/26, and 10.0.2/24.
var blocks = []string{"0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/22", "10.0.1.0/24", "10.0.1.128/25", "10.0.1.192/26", "10.0.2.0/24"}

func randAddr(r *rand.Rand) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 0, byte(r.IntN(4)), byte(r.IntN(256))})
}

func randSel(r *rand.Rand) *metav1.LabelSelector {
	switch r.IntN(4) {
	case 0:
		return sel()
	case 1:
		return sel("tier", pick(r, "x", "y"))
	case 2:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}}}}
	}
	return sel("app", pick(r, "a", "b", "c"))
}

func randPeers(r *rand.Rand) []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for range r.IntN(3) {
		switch r.IntN(5) {
		case 0:
			out = append(out, podPeer(randSel(r)))
		case 1:
			out = append(out, nsPeer(pick(r, sel(), sel("env", "p"), sel(v1.LabelMetadataName, "ns2"))))
		case 2:
			out = append(out, networkingv1.NetworkPolicyPeer{PodSelector: randSel(r), NamespaceSelector: sel("env", pick(r, "p", "d"))})
		default:
			i := r.IntN(len(blocks))
			cidr := blocks[i]
			if r.IntN(4) == 0 {
				cidr = randAddr(r).String() + "/32"
			}
			var except []string
			for range r.IntN(3) {
				// A nested block, a /28 or a /32 inside cidr (or, rarely, cidr itself).
				c := netip.MustParsePrefix(cidr)
				e := netip.PrefixFrom(randAddr(r), pick(r, 28, 32, 26)).Masked()
				if j := i + r.IntN(len(blocks)-i); r.IntN(2) == 0 {
					e = netip.MustParsePrefix(blocks[j])
				}
				if e.Bits() >= c.Bits() && c.Contains(e.Addr()) {
					except = append(except, e.String())
				}
			}
			out = append(out, ipPeer(cidr, except...))
		}
	}
	return out
}

func randPorts(r *rand.Rand) []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range r.IntN(3) {
		switch r.IntN(5) {
		case 0:
			out = append(out, allPorts(pick(r, tcp, udp)))
		case 1:
			out = append(out, numPort(pick(r, tcp, udp), pick(r, 53, 80, 8080)))
		case 2:
			out = append(out, numPort(tcp, 8000, 8100))
		default:
			out = append(out, namedPort(pick(r, tcp, udp), pick(r, "http", "dns", "alt")))
		}
	}
	return out
}

// reference is NetworkPolicy read straight from the objects for one packet, with no prefixes:
// the model Compile's tables must agree with.
type reference struct {
	in   Input
	sels map[*metav1.LabelSelector]labels.Selector
	live map[netip.Addr][]*v1.Pod
}

func newReference(in Input) *reference {
	ref := &reference{in: in, sels: map[*metav1.LabelSelector]labels.Selector{}, live: map[netip.Addr][]*v1.Pod{}}
	for _, p := range in.Pods {
		if a, ok := podAddr(p); ok && !p.Spec.HostNetwork && p.Status.Phase != v1.PodFailed && p.Status.Phase != v1.PodSucceeded {
			ref.live[a] = append(ref.live[a], p)
		}
	}
	return ref
}

func (ref *reference) selects(s *metav1.LabelSelector, lbls map[string]string) bool {
	sel, ok := ref.sels[s]
	if !ok {
		var err error
		if sel, err = metav1.LabelSelectorAsSelector(s); err != nil {
			sel = labels.Nothing()
		}
		ref.sels[s] = sel
	}
	return sel.Matches(labels.Set(lbls))
}

func (ref *reference) allows(ep *v1.Pod, egress bool, addr netip.Addr, proto v1.Protocol, port uint16) bool {
	isolated := false
	for _, np := range ref.in.Policies {
		if np.Namespace != ep.Namespace || !ref.selects(&np.Spec.PodSelector, ep.Labels) {
			continue
		}
		types := np.Spec.PolicyTypes
		if len(types) == 0 {
			types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(np.Spec.Egress) > 0 {
				types = append(types, networkingv1.PolicyTypeEgress)
			}
		}
		for _, t := range types {
			if (t == networkingv1.PolicyTypeEgress) != egress {
				continue
			}
			isolated = true
			if egress {
				for _, rule := range np.Spec.Egress {
					if ref.rule(np.Namespace, rule.To, rule.Ports, nil, addr, proto, port) {
						return true
					}
				}
			} else {
				for _, rule := range np.Spec.Ingress {
					if ref.rule(np.Namespace, rule.From, rule.Ports, ep, addr, proto, port) {
						return true
					}
				}
			}
		}
	}
	return !isolated
}

// rule: dst is the ingress endpoint, or nil for egress, where named ports resolve against
// the peer pods at addr that the matching peer covers.
func (ref *reference) rule(ns string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort,
	dst *v1.Pod, addr netip.Addr, proto v1.Protocol, port uint16) bool {
	matched := len(peers) == 0
	var dests []*v1.Pod
	if matched {
		dests = ref.live[addr]
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			cidr := netip.MustParsePrefix(p.IPBlock.CIDR)
			inside := cidr.Contains(addr)
			for _, e := range p.IPBlock.Except {
				inside = inside && !netip.MustParsePrefix(e).Contains(addr)
			}
			if inside {
				matched = true
				dests = append(dests, ref.live[addr]...)
			}
			continue
		}
		for _, q := range ref.live[addr] {
			nsOK := q.Namespace == ns
			if p.NamespaceSelector != nil {
				lbls := map[string]string{v1.LabelMetadataName: q.Namespace}
				for _, n := range ref.in.Namespaces {
					if n.Name == q.Namespace {
						lbls = labels.Merge(n.Labels, lbls)
					}
				}
				nsOK = ref.selects(p.NamespaceSelector, lbls)
			}
			if nsOK && (p.PodSelector == nil || ref.selects(p.PodSelector, q.Labels)) {
				matched = true
				dests = append(dests, q)
			}
		}
	}
	if !matched {
		return false
	}
	if len(ports) == 0 {
		return true
	}
	if dst != nil {
		dests = []*v1.Pod{dst}
	}
	for _, pp := range ports {
		want := v1.ProtocolTCP
		if pp.Protocol != nil {
			want = *pp.Protocol
		}
		switch {
		case want != proto:
		case pp.Port == nil:
			return true
		case pp.Port.Type == intstr.Int:
			end := pp.Port.IntVal
			if pp.EndPort != nil {
				end = *pp.EndPort
			}
			if int32(port) >= pp.Port.IntVal && int32(port) <= end {
				return true
			}
		default:
			for _, d := range dests {
				for _, c := range d.Spec.Containers {
					for _, cp := range c.Ports {
						cpProto := cp.Protocol
						if cpProto == "" {
							cpProto = v1.ProtocolTCP
						}
						if cp.Name == pp.Port.StrVal && cpProto == proto && cp.ContainerPort == int32(port) {
							return true
						}
					}
				}
			}
		}
	}
	return false
}

// TestMatchesReference checks the LPM tables of random clusters against the reference, at every
// pod address, around every block and except boundary, and at random addresses.
func TestMatchesReference(t *testing.T) {
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 1))
		input := randomInput(r, 24, 8)
		st := Compile(input)
		checkState(t, st)

		addrs := map[netip.Addr]bool{}
		edges := func(p netip.Prefix) {
			p = p.Masked()
			first := p.Addr()
			last := netip.AddrFrom4([4]byte(first.As4()))
			for b := p.Bits(); b < 32; b++ {
				a := last.As4()
				a[b/8] |= 0x80 >> (b % 8)
				last = netip.AddrFrom4(a)
			}
			for _, a := range []netip.Addr{first, first.Prev(), first.Next(), last, last.Prev(), last.Next()} {
				if a.IsValid() {
					addrs[a] = true
				}
			}
		}
		for _, b := range blocks {
			edges(netip.MustParsePrefix(b))
		}
		for _, np := range input.Policies {
			for _, rule := range np.Spec.Ingress {
				for _, p := range rule.From {
					peerEdges(p, edges)
				}
			}
			for _, rule := range np.Spec.Egress {
				for _, p := range rule.To {
					peerEdges(p, edges)
				}
			}
		}
		for _, p := range input.Pods {
			if a, ok := podAddr(p); ok {
				addrs[a] = true
			}
		}
		for range 20 {
			addrs[randAddr(r)] = true
		}
		type pp struct {
			proto v1.Protocol
			port  uint16
		}
		probes := []pp{{tcp, 0}, {tcp, 53}, {udp, 53}, {tcp, 80}, {tcp, 8080}, {udp, 8080}, {tcp, 7999}, {tcp, 8050}, {tcp, 8100}, {tcp, 8101}, {sctp, 80}}
		for _, p := range input.Pods {
			for _, cp := range p.Spec.Containers[0].Ports {
				probes = append(probes, pp{cmpOr(cp.Protocol, tcp), uint16(cp.ContainerPort)})
			}
		}

		pods := map[string]*v1.Pod{}
		for _, p := range input.Pods {
			pods[p.Namespace+"/"+p.Name] = p
		}
		ref := newReference(input)
		checked := 0
		for _, ep := range st.Endpoints {
			pod := pods[ep.Pod.String()]
			for _, egress := range []bool{false, true} {
				rules := ep.Ingress
				if egress {
					rules = ep.Egress
				}
				for a := range addrs {
					for _, pr := range probes {
						want := ref.allows(pod, egress, a, pr.proto, pr.port)
						if got := lookup(rules, a, pr.proto, pr.port); got != want {
							t.Fatalf("seed %d: %s egress=%v peer %v %s/%d = %v, want %v\nrules %+v",
								seed, ep.Pod, egress, a, pr.proto, pr.port, got, want, rules)
						}
						checked++
					}
				}
			}
		}
		if checked == 0 {
			t.Fatalf("seed %d: nothing checked", seed)
		}
	}
}

func peerEdges(p networkingv1.NetworkPolicyPeer, edges func(netip.Prefix)) {
	if p.IPBlock == nil {
		return
	}
	edges(netip.MustParsePrefix(p.IPBlock.CIDR))
	for _, e := range p.IPBlock.Except {
		edges(netip.MustParsePrefix(e))
	}
}

func cmpOr(p, def v1.Protocol) v1.Protocol {
	if p == "" {
		return def
	}
	return p
}

// TestDeterministic compiles one input in several orders; Compile must not care, nor change
// the input.
func TestDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	input := randomInput(r, 200, 30)
	want := Compile(input)
	if len(want.Endpoints) == 0 {
		t.Fatal("no endpoints")
	}
	for i := range 5 {
		shuffled := Input{
			NodeName:   input.NodeName,
			Pods:       shuffle(r, input.Pods),
			Namespaces: shuffle(r, input.Namespaces),
			Policies:   shuffle(r, input.Policies),
		}
		before := deepCopy(shuffled)
		got := Compile(shuffled)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("shuffle %d: state differs", i)
		}
		if !reflect.DeepEqual(shuffled, before) {
			t.Fatalf("shuffle %d: Compile modified its input", i)
		}
	}
}

func shuffle[T any](r *rand.Rand, s []T) []T {
	out := append([]T(nil), s...)
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func deepCopy(in Input) Input {
	out := Input{NodeName: in.NodeName}
	for _, p := range in.Pods {
		out.Pods = append(out.Pods, p.DeepCopy())
	}
	for _, n := range in.Namespaces {
		out.Namespaces = append(out.Namespaces, n.DeepCopy())
	}
	for _, np := range in.Policies {
		out.Policies = append(out.Policies, np.DeepCopy())
	}
	return out
}
