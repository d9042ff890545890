package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// lookup is the dataplane's verdict for a peer address and destination port: longest prefix
// match over the entries, no match denies, nil rules allow everything. The eBPF side implements
// the same in BPF.
func lookup(r *Rules, addr netip.Addr, proto v1.Protocol, port uint16) bool {
	if r == nil {
		return true
	}
	best := -1
	for i, e := range r.Entries {
		if e.Prefix.Contains(addr) && (best < 0 || e.Prefix.Bits() > r.Entries[best].Prefix.Bits()) {
			best = i
		}
	}
	if best < 0 {
		return false
	}
	e := r.Entries[best]
	if e.Any {
		return true
	}
	for _, pr := range e.Ports {
		if pr.Protocol == proto && pr.First <= port && port <= pr.Last {
			return true
		}
	}
	return false
}

// checkState fails t when st breaks an invariant the API promises.
func checkState(t *testing.T, st *State) {
	t.Helper()
	if !slices.IsSortedFunc(st.Endpoints, func(a, b Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmpName(a.Pod, b.Pod))
	}) {
		t.Errorf("endpoints not sorted")
	}
	if !slices.IsSortedFunc(st.Problems, func(a, b Problem) int {
		return cmp.Or(cmpName(a.Policy, b.Policy), strings.Compare(a.Message, b.Message))
	}) {
		t.Errorf("problems not sorted")
	}
	for _, ep := range st.Endpoints {
		if !ep.Addr.Is4() {
			t.Errorf("%s: address %v is not IPv4", ep.Pod, ep.Addr)
		}
		for dir, r := range map[string]*Rules{"ingress": ep.Ingress, "egress": ep.Egress} {
			if r != nil {
				checkRules(t, fmt.Sprintf("%s %s", ep.Pod, dir), r)
			}
		}
	}
}

func checkRules(t *testing.T, what string, r *Rules) {
	t.Helper()
	if len(r.Policies) == 0 || !slices.IsSortedFunc(r.Policies, cmpName) {
		t.Errorf("%s: policies %v empty or not sorted", what, r.Policies)
	}
	for i, e := range r.Entries {
		p := e.Prefix
		if !p.Addr().Is4() || p != p.Masked() {
			t.Errorf("%s: entry %v not a masked IPv4 prefix", what, p)
		}
		if i > 0 {
			q := r.Entries[i-1].Prefix
			if cmp.Or(q.Addr().Compare(p.Addr()), cmp.Compare(q.Bits(), p.Bits())) >= 0 {
				t.Errorf("%s: entries %v, %v not sorted and unique", what, q, p)
			}
		}
		if e.Any && (e.Ports != nil || e.AnyPolicy == (types.NamespacedName{})) {
			t.Errorf("%s: %v: Any with ports %v or no policy", what, p, e.Ports)
		}
		if !e.Any && e.AnyPolicy != (types.NamespacedName{}) {
			t.Errorf("%s: %v: AnyPolicy without Any", what, p)
		}
		for j, pr := range e.Ports {
			if pr.First > pr.Last || pr.Policy == (types.NamespacedName{}) {
				t.Errorf("%s: %v: bad range %+v", what, p, pr)
			}
			if j > 0 {
				q := e.Ports[j-1]
				if q.Protocol > pr.Protocol || q.Protocol == pr.Protocol && int(q.Last)+1 >= int(pr.First) {
					t.Errorf("%s: %v: ranges %+v, %+v not sorted and merged", what, p, q, pr)
				}
			}
		}
	}
}

func endpoint(st *State, pod string) *Endpoint {
	for i := range st.Endpoints {
		if st.Endpoints[i].Pod.String() == pod {
			return &st.Endpoints[i]
		}
	}
	return nil
}

// Object builders.

func mkPod(nsName, ip, node string, lbls map[string]string, ports ...v1.ContainerPort) *v1.Pod {
	ns, name, _ := strings.Cut(nsName, "/")
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls, UID: types.UID(nsName)},
		Spec:       v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "c", Ports: ports}}},
		Status:     v1.PodStatus{Phase: v1.PodRunning},
	}
	if ip != "" {
		p.Status.PodIP = ip
		p.Status.PodIPs = []v1.PodIP{{IP: ip}}
	}
	return p
}

func cport(name string, port int32, proto v1.Protocol) v1.ContainerPort {
	return v1.ContainerPort{Name: name, ContainerPort: port, Protocol: proto}
}

func mkNS(name string, lbls map[string]string) *v1.Namespace {
	return &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
}

func mkPolicy(nsName string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	ns, name, _ := strings.Cut(nsName, "/")
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

// sel is a selector matching the label pairs kv; sel() is the empty selector (everything).
func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	for i := 0; i+1 < len(kv); i += 2 {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func ipPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func numPort(proto v1.Protocol, port int, endPort ...int32) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(int32(port))
	np := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
	if len(endPort) > 0 {
		np.EndPort = &endPort[0]
	}
	return np
}

func namedPort(proto v1.Protocol, name string) networkingv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func allPorts(proto v1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto}
}

func ingress(ports []networkingv1.NetworkPolicyPort, from ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: from, Ports: ports}
}

func egress(ports []networkingv1.NetworkPolicyPort, to ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: to, Ports: ports}
}

func ports(ps ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort { return ps }

func nn(s string) types.NamespacedName {
	ns, name, _ := strings.Cut(s, "/")
	return types.NamespacedName{Namespace: ns, Name: name}
}
