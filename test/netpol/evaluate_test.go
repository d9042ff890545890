//go:build netpol

package netpol_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// evaluate is the NetworkPolicy specification applied to the model, without
// a cluster: the cases' hand-written tables are checked against it
// (TestExpectations), so a slip in either shows before a cluster is blamed.
func evaluate(m *model, col column) *reach {
	r := newReach(m.pods)
	for i, from := range m.pods {
		for j, to := range m.pods {
			r.ok[i][j] = from == to || (m.allows(from, to, col, networkingv1.PolicyTypeEgress) &&
				m.allows(from, to, col, networkingv1.PolicyTypeIngress))
		}
	}
	return r
}

// allows reports whether the policies of one direction let from reach to:
// those of from's namespace that select from for egress, or of to's
// namespace that select to for ingress. A pod no policy selects for a
// direction is open in it; otherwise some rule of some policy must allow.
func (m *model) allows(from, to podID, col column, dir networkingv1.PolicyType) bool {
	self, other := from, to
	if dir == networkingv1.PolicyTypeIngress {
		self, other = to, from
	}
	selected := false
	for _, p := range m.sortedPolicies() {
		if m.baseNS(p.Namespace) != self.ns || !slices.Contains(effectiveTypes(p), dir) ||
			!selects(&p.Spec.PodSelector, m.podLabels[self]) {
			continue
		}
		selected = true
		if dir == networkingv1.PolicyTypeIngress {
			for _, rule := range p.Spec.Ingress {
				if m.peersMatch(self.ns, rule.From, other) && portsMatch(rule.Ports, col) {
					return true
				}
			}
		} else {
			for _, rule := range p.Spec.Egress {
				if m.peersMatch(self.ns, rule.To, other) && portsMatch(rule.Ports, col) {
					return true
				}
			}
		}
	}
	return !selected
}

func (m *model) sortedPolicies() []*networkingv1.NetworkPolicy {
	var keys []string
	for k := range m.policies {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []*networkingv1.NetworkPolicy
	for _, k := range keys {
		out = append(out, m.policies[k])
	}
	return out
}

// effectiveTypes are a policy's policyTypes, or their default: Ingress,
// and Egress when it has egress rules.
func effectiveTypes(p *networkingv1.NetworkPolicy) []networkingv1.PolicyType {
	if len(p.Spec.PolicyTypes) > 0 {
		return p.Spec.PolicyTypes
	}
	ts := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	if len(p.Spec.Egress) > 0 {
		ts = append(ts, networkingv1.PolicyTypeEgress)
	}
	return ts
}

func selects(s *metav1.LabelSelector, l map[string]string) bool {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		panic(fmt.Sprintf("bad selector in a case: %v", err))
	}
	return sel.Matches(labels.Set(l))
}

// peersMatch reports whether a rule's peers (none: everyone) take in pod,
// for a policy in namespace ns.
func (m *model) peersMatch(ns string, peers []networkingv1.NetworkPolicyPeer, pod podID) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			ip := netip.MustParseAddr(m.podIP[pod])
			if netip.MustParsePrefix(p.IPBlock.CIDR).Contains(ip) && !slices.ContainsFunc(p.IPBlock.Except, func(e string) bool {
				return netip.MustParsePrefix(e).Contains(ip)
			}) {
				return true
			}
			continue
		}
		nsOK := pod.ns == ns
		if p.NamespaceSelector != nil {
			nsOK = selects(p.NamespaceSelector, m.nsLabels[pod.ns])
		}
		if nsOK && (p.PodSelector == nil || selects(p.PodSelector, m.podLabels[pod])) {
			return true
		}
	}
	return false
}

// portsMatch reports whether a rule's ports (none: all) take in col. A
// named port is looked up among the destination pod's container ports,
// which are the same on every model pod.
func portsMatch(ports []networkingv1.NetworkPolicyPort, col column) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if proto != col.proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.Int && p.EndPort != nil:
			if col.port >= p.Port.IntVal && col.port <= *p.EndPort {
				return true
			}
		case p.Port.Type == intstr.Int:
			if col.port == p.Port.IntVal {
				return true
			}
		default:
			for _, cp := range allContainerPorts() {
				if cp.Name == p.Port.StrVal && cp.Protocol == proto && cp.ContainerPort == col.port {
					return true
				}
			}
		}
	}
	return false
}

// fakeModel is the model with made-up addresses, as a cluster would give.
func fakeModel() *model {
	m := newModel("-test")
	for i, p := range m.pods {
		m.podIP[p] = fmt.Sprintf("10.244.%d.%d", i%3, 10+i)
		m.svcIP[p] = fmt.Sprintf("10.96.0.%d", 10+i)
	}
	m.podCIDR = "10.244.0.0/16"
	return m
}

// TestExpectations checks every case's hand-written tables against the
// specification as evaluate reads it; it needs no cluster.
func TestExpectations(t *testing.T) {
	names := map[string]bool{}
	for _, c := range cases() {
		if names[c.name] {
			t.Errorf("two cases named %q", c.name)
		}
		names[c.name] = true
		m := fakeModel()
		for n, st := range c.steps {
			for _, a := range st.actions {
				a.model(m)
			}
			if len(st.cols) == 0 {
				t.Errorf("%s, step %d: probes nothing", c.name, n+1)
			}
			for _, col := range st.cols {
				want, got := expected(m, st, col), evaluate(m, col)
				if want.String() != got.String() {
					t.Errorf("%s, step %d (%s), %s:\nhand-written:\n%sspecification:\n%spolicies:\n%s",
						c.name, n+1, st.what, col, want, got, policiesYAML(m))
				}
			}
		}
	}
	if len(names) < 30 {
		t.Errorf("%d cases, want at least 30", len(names))
	}
}

// TestEvaluateBasics pins evaluate itself on policies whose tables are
// plain to see.
func TestEvaluateBasics(t *testing.T) {
	m := fakeModel()
	policy("x", "deny", sel(), ingressOnly).model(m)
	policy("y", "to-z", sel("pod", "a"), allowTo(peers(nsWith(sel("ns", "z"))), port("", 81))).model(m)
	got := evaluate(m, tcp81).String()
	want := strings.Join([]string{
		"-     x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c",
		"x/a   .    X    X    X    .    .    .    .    .",
		"x/b   X    .    X    X    .    .    .    .    .",
		"x/c   X    X    .    X    .    .    .    .    .",
		"y/a   X    X    X    .    X    X    .    .    .",
		"y/b   X    X    X    X    .    .    .    .    .",
		"y/c   X    X    X    X    .    .    .    .    .",
		"z/a   X    X    X    X    .    .    .    .    .",
		"z/b   X    X    X    X    .    .    .    .    .",
		"z/c   X    X    X    X    .    .    .    .    .",
	}, "\n") + "\n"
	if got != want {
		t.Errorf("evaluate:\n%swant\n%s", got, want)
	}
	// The egress policy has egress rules and no policyTypes: it isolates
	// y/a for ingress too.
	if evaluate(m, tcp81).ok[m.index(podID{"z", "a"})][m.index(podID{"y", "a"})] {
		t.Error("z/a reaches y/a, whose policy defaults to Ingress and Egress")
	}
	if !evaluate(m, udp81).ok[m.index(podID{"y", "b"})][m.index(podID{"z", "b"})] {
		t.Error("y/b is not selected, yet cannot reach z/b")
	}
}
