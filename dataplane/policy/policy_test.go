package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	tcp  = v1.ProtocolTCP
	udp  = v1.ProtocolUDP
	sctp = v1.ProtocolSCTP
)

// fixture is a small cluster seen from node n1. Namespace dev has pods but no object.
//
//	n1: default/web 10.0.1.1 (http 8080/TCP, dns 53/UDP), default/db 10.0.1.2 (pg 5432, http 8081),
//	    prod/api 10.0.1.3; not endpoints: hostnet, done (Succeeded), v6 (IPv6 only), pending (no IP)
//	n2: default/cli 10.0.2.1, prod/web 10.0.2.2 (http 9090), dev/tool 10.0.2.3
func fixture() Input {
	hostnet := mkPod("default/hostnet", "10.0.9.1", "n1", map[string]string{"app": "web"})
	hostnet.Spec.HostNetwork = true
	done := mkPod("default/done", "10.0.1.9", "n1", map[string]string{"app": "web"})
	done.Status.Phase = v1.PodSucceeded
	return Input{
		NodeName: "n1",
		Pods: []*v1.Pod{
			mkPod("default/web", "10.0.1.1", "n1", map[string]string{"app": "web"},
				cport("http", 8080, tcp), cport("dns", 53, udp)),
			mkPod("default/db", "10.0.1.2", "n1", map[string]string{"app": "db"},
				cport("pg", 5432, ""), cport("http", 8081, tcp)),
			mkPod("prod/api", "10.0.1.3", "n1", map[string]string{"app": "api"}),
			mkPod("default/cli", "10.0.2.1", "n2", map[string]string{"app": "cli"}),
			mkPod("prod/web", "10.0.2.2", "n2", map[string]string{"app": "web"}, cport("http", 9090, tcp)),
			mkPod("dev/tool", "10.0.2.3", "n2", map[string]string{"app": "tool"}),
			hostnet, done,
			mkPod("default/v6", "fd00::1", "n1", map[string]string{"app": "web"}),
			mkPod("default/pending", "", "n1", map[string]string{"app": "web"}),
		},
		Namespaces: []*v1.Namespace{
			mkNS("default", map[string]string{"team": "a"}),
			mkNS("prod", map[string]string{"team": "b"}),
		},
	}
}

func TestEndpoints(t *testing.T) {
	in := fixture()
	in.Pods = append(in.Pods, mkPod("default/dual", "", "n1", nil))
	in.Pods[len(in.Pods)-1].Status.PodIPs = []v1.PodIP{{IP: "fd00::2"}, {IP: "10.0.1.4"}}
	st := Compile(in)
	var got []string
	for _, ep := range st.Endpoints {
		got = append(got, ep.Pod.String()+" "+ep.Addr.String())
		if ep.Ingress != nil || ep.Egress != nil {
			t.Errorf("%s isolated without policies", ep.Pod)
		}
	}
	want := []string{"default/web 10.0.1.1", "default/db 10.0.1.2", "prod/api 10.0.1.3", "default/dual 10.0.1.4"}
	if !slices.Equal(got, want) {
		t.Errorf("endpoints = %q, want %q", got, want)
	}
}

type probe struct {
	pod    string // the endpoint
	egress bool
	peer   string
	proto  v1.Protocol
	port   uint16
	want   bool
}

func from(pod, peer string, proto v1.Protocol, port uint16, want bool) probe {
	return probe{pod, false, peer, proto, port, want}
}

func to(pod, peer string, proto v1.Protocol, port uint16, want bool) probe {
	return probe{pod, true, peer, proto, port, want}
}

func TestCompile(t *testing.T) {
	webSel := *sel("app", "web")
	ptypes := func(ts ...networkingv1.PolicyType) []networkingv1.PolicyType { return ts }
	ingressT, egressT := networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress
	bogus := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}}

	tests := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		isolated []string // "pod in" / "pod out": exactly these endpoint directions are isolated
		probes   []probe
		problems []string // "policy: message", exactly these; a trailing "*" matches any rest
		check    func(t *testing.T, st *State)
	}{{
		name:   "no policies",
		probes: []probe{from("default/web", "1.2.3.4", tcp, 80, true), to("default/web", "1.2.3.4", udp, 0, true)},
	}, {
		name: "default policyTypes without egress rules is ingress only",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(ports(numPort(tcp, 80)), podPeer(sel("app", "cli")))},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.2.1", tcp, 80, true),
			from("default/web", "10.0.2.1", tcp, 81, false),
			from("default/web", "10.0.2.1", udp, 80, false),
			from("default/web", "10.0.1.2", tcp, 80, false),
			to("default/web", "8.8.8.8", tcp, 80, true),
			from("default/db", "8.8.8.8", tcp, 80, true),
		},
	}, {
		name: "default policyTypes with egress rules is ingress and egress",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			Egress: []networkingv1.NetworkPolicyEgressRule{egress(ports(numPort(udp, 53)), ipPeer("10.0.0.0/8"))},
		})},
		isolated: []string{"default/web in", "default/web out", "default/db in", "default/db out"},
		probes: []probe{
			from("default/web", "10.0.2.1", tcp, 80, false),
			to("default/web", "10.9.9.9", udp, 53, true),
			to("default/web", "10.9.9.9", tcp, 53, false),
			to("default/db", "11.0.0.1", udp, 53, false),
			from("prod/api", "10.0.2.1", tcp, 80, true),
		},
	}, {
		name: "egress only",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "db"),
			PolicyTypes: ptypes(egressT),
			Egress:      []networkingv1.NetworkPolicyEgressRule{egress(nil, podPeer(sel("app", "web")))},
		})},
		isolated: []string{"default/db out"},
		probes: []probe{
			to("default/db", "10.0.1.1", tcp, 1234, true),
			to("default/db", "10.0.1.1", sctp, 9, true),
			to("default/db", "10.0.2.2", tcp, 1234, false), // prod/web: other namespace
			to("default/db", "10.0.1.9", tcp, 1234, false), // Succeeded pod
			to("default/db", "10.0.9.1", tcp, 1234, false), // hostNetwork pod
			from("default/db", "1.1.1.1", tcp, 1, true),
		},
	}, {
		name: "deny all ingress",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/deny", networkingv1.NetworkPolicySpec{
			PolicyTypes: ptypes(ingressT),
			Ingress:     []networkingv1.NetworkPolicyIngressRule{},
		})},
		isolated: []string{"default/web in", "default/db in"},
		probes: []probe{
			from("default/web", "10.0.1.2", tcp, 80, false),
			from("default/db", "0.0.0.0", udp, 0, false),
			to("default/db", "8.8.8.8", udp, 53, true),
		},
		check: func(t *testing.T, st *State) {
			r := endpoint(st, "default/web").Ingress
			if len(r.Entries) != 0 || !slices.Equal(r.Policies, []types.NamespacedName{nn("default/deny")}) {
				t.Errorf("deny all = %+v, want no entries, policy default/deny", r)
			}
		},
	}, {
		name: "deny all egress listed without rules",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PolicyTypes: ptypes(ingressT, egressT),
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
		})},
		isolated: []string{"default/web in", "default/web out", "default/db in", "default/db out"},
		probes: []probe{
			from("default/web", "1.2.3.4", sctp, 1, true),
			to("default/web", "1.2.3.4", tcp, 1, false),
			to("default/web", "10.0.1.2", tcp, 5432, false),
		},
	}, {
		name: "egress rules ignored when policyTypes lists only Ingress",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			PolicyTypes: ptypes(ingressT),
			Egress:      []networkingv1.NetworkPolicyEgressRule{egress(nil, ipPeer("10.0.0.0/8"))},
		})},
		isolated: []string{"default/web in"},
		probes:   []probe{to("default/web", "1.2.3.4", tcp, 1, true)},
	}, {
		name: "podSelector and namespaceSelector in one peer AND",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, networkingv1.NetworkPolicyPeer{
				NamespaceSelector: sel("team", "b"), PodSelector: sel("app", "web"),
			})},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.2.2", tcp, 80, true),  // prod/web
			from("default/web", "10.0.1.3", tcp, 80, false), // prod/api
			from("default/web", "10.0.1.1", tcp, 80, false), // default/web
		},
	}, {
		name: "separate peers OR",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil,
				nsPeer(sel("team", "b")), podPeer(sel("app", "cli")))},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.2.2", tcp, 80, true),  // prod/web
			from("default/web", "10.0.1.3", tcp, 80, true),  // prod/api
			from("default/web", "10.0.2.1", tcp, 80, true),  // default/cli
			from("default/web", "10.0.1.2", tcp, 80, false), // default/db
			from("default/web", "10.0.2.3", tcp, 80, false), // dev/tool
		},
	}, {
		name: "empty namespaceSelector is every namespace",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(nil, nsPeer(sel()))},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.2.3", tcp, 80, true), // dev/tool: namespace without object
			from("default/web", "10.0.2.2", tcp, 80, true),
			from("default/web", "10.0.1.2", tcp, 80, true),
			from("default/web", "10.0.1.5", tcp, 80, false), // no pod
			from("default/web", "10.0.9.1", tcp, 80, false), // hostNetwork
			from("default/web", "8.8.8.8", tcp, 80, false),
		},
	}, {
		name: "namespaceSelector on kubernetes.io/metadata.name",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil,
				nsPeer(sel(v1.LabelMetadataName, "dev")),
				networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(v1.LabelMetadataName, "prod"), PodSelector: sel("app", "api")})},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.2.3", tcp, 80, true), // dev/tool
			from("default/web", "10.0.1.3", tcp, 80, true), // prod/api
			from("default/web", "10.0.2.2", tcp, 80, false),
		},
	}, {
		name: "podSelector alone is the policy's namespace",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("prod/p", networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, podPeer(sel("app", "web")))},
		})},
		isolated: []string{"prod/api in"},
		probes: []probe{
			from("prod/api", "10.0.2.2", tcp, 80, true),
			from("prod/api", "10.0.1.1", tcp, 80, false),
			from("default/web", "10.0.1.1", tcp, 80, true),
		},
	}, {
		name: "ipBlock except",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(numPort(tcp, 80)),
				ipPeer("10.0.0.0/16", "10.0.2.0/24", "10.0.1.128/25"))},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.0.0", tcp, 80, true),
			from("default/web", "10.0.1.1", tcp, 80, true),
			from("default/web", "10.0.1.127", tcp, 80, true),
			from("default/web", "10.0.1.128", tcp, 80, false),
			from("default/web", "10.0.1.255", tcp, 80, false),
			from("default/web", "10.0.2.0", tcp, 80, false),
			from("default/web", "10.0.2.1", tcp, 80, false), // a pod inside the hole
			from("default/web", "10.0.2.255", tcp, 80, false),
			from("default/web", "10.0.3.0", tcp, 80, true),
			from("default/web", "10.0.255.255", tcp, 80, true),
			from("default/web", "10.1.0.0", tcp, 80, false),
			from("default/web", "9.255.255.255", tcp, 80, false),
			from("default/web", "10.0.0.1", tcp, 81, false),
		},
	}, {
		name: "except hole partly refilled by a pod peer",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(numPort(tcp, 80)), ipPeer("10.0.0.0/16", "10.0.2.0/24")),
				ingress(ports(numPort(tcp, 443)), podPeer(sel("app", "cli"))),
			},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.2.1", tcp, 443, true),
			from("default/web", "10.0.2.1", tcp, 80, false),
			from("default/web", "10.0.2.5", tcp, 443, false),
			from("default/web", "10.0.2.5", tcp, 80, false),
			from("default/web", "10.0.3.5", tcp, 80, true),
		},
	}, {
		name: "overlapping ipBlocks of two policies union their ports",
		policies: []*networkingv1.NetworkPolicy{
			mkPolicy("default/b", networkingv1.NetworkPolicySpec{
				PodSelector: webSel,
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(numPort(tcp, 443), numPort(udp, 53)),
					ipPeer("10.0.0.0/16", "10.0.3.0/24"))},
			}),
			mkPolicy("default/a", networkingv1.NetworkPolicySpec{
				PodSelector: webSel,
				Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(ports(numPort(tcp, 80)), ipPeer("10.0.0.0/8"))},
			}),
		},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.5.5", tcp, 80, true),
			from("default/web", "10.0.5.5", tcp, 443, true),
			from("default/web", "10.0.5.5", udp, 53, true),
			from("default/web", "10.0.5.5", tcp, 53, false),
			from("default/web", "10.1.0.1", tcp, 80, true),
			from("default/web", "10.1.0.1", tcp, 443, false),
			from("default/web", "10.0.3.3", tcp, 80, true),
			from("default/web", "10.0.3.3", tcp, 443, false),
		},
		check: func(t *testing.T, st *State) {
			r := endpoint(st, "default/web").Ingress
			want := []Entry{
				{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Ports: []PortRange{{tcp, 80, 80, nn("default/a")}}},
				{Prefix: netip.MustParsePrefix("10.0.0.0/16"), Ports: []PortRange{
					{tcp, 80, 80, nn("default/a")}, {tcp, 443, 443, nn("default/b")}, {udp, 53, 53, nn("default/b")}}},
				{Prefix: netip.MustParsePrefix("10.0.3.0/24"), Ports: []PortRange{{tcp, 80, 80, nn("default/a")}}},
			}
			if !reflect.DeepEqual(r.Entries, want) {
				t.Errorf("entries = %+v\nwant %+v", r.Entries, want)
			}
			if !slices.Equal(r.Policies, []types.NamespacedName{nn("default/a"), nn("default/b")}) {
				t.Errorf("policies = %v", r.Policies)
			}
		},
	}, {
		name: "ranges of two policies merge and keep the least policy",
		policies: []*networkingv1.NetworkPolicy{
			mkPolicy("default/b", networkingv1.NetworkPolicySpec{
				PodSelector: webSel,
				Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(ports(numPort(tcp, 80, 90), numPort(tcp, 200)))},
			}),
			mkPolicy("default/a", networkingv1.NetworkPolicySpec{
				PodSelector: webSel,
				Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(ports(numPort(tcp, 85, 100), numPort(tcp, 101)))},
			}),
		},
		isolated: []string{"default/web in"},
		check: func(t *testing.T, st *State) {
			want := []Entry{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Ports: []PortRange{
				{tcp, 80, 101, nn("default/a")}, {tcp, 200, 200, nn("default/b")}}}}
			if got := endpoint(st, "default/web").Ingress.Entries; !reflect.DeepEqual(got, want) {
				t.Errorf("entries = %+v\nwant %+v", got, want)
			}
		},
	}, {
		name: "rule without ports allows everything and names the least policy",
		policies: []*networkingv1.NetworkPolicy{
			mkPolicy("default/b", networkingv1.NetworkPolicySpec{PodSelector: webSel, Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}),
			mkPolicy("default/a", networkingv1.NetworkPolicySpec{PodSelector: webSel, Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(nil, ipPeer("0.0.0.0/0")),
				ingress(ports(numPort(tcp, 80)), ipPeer("10.0.0.0/8")),
			}}),
		},
		isolated: []string{"default/web in"},
		probes:   []probe{from("default/web", "1.2.3.4", sctp, 0, true), from("default/web", "10.0.0.1", udp, 9, true)},
		check: func(t *testing.T, st *State) {
			want := []Entry{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Any: true, AnyPolicy: nn("default/a")}}
			if got := endpoint(st, "default/web").Ingress.Entries; !reflect.DeepEqual(got, want) {
				t.Errorf("entries = %+v, want %+v", got, want)
			}
		},
	}, {
		name: "port without number is every port of its protocol",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(ports(allPorts(udp), allPorts(sctp)))},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "1.2.3.4", udp, 0, true),
			from("default/web", "1.2.3.4", udp, 65535, true),
			from("default/web", "1.2.3.4", sctp, 5, true),
			from("default/web", "1.2.3.4", tcp, 5, false),
		},
	}, {
		name: "endPort",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(ports(numPort(tcp, 8000, 8100)))},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "1.2.3.4", tcp, 7999, false),
			from("default/web", "1.2.3.4", tcp, 8000, true),
			from("default/web", "1.2.3.4", tcp, 8100, true),
			from("default/web", "1.2.3.4", tcp, 8101, false),
			from("default/web", "1.2.3.4", udp, 8050, false),
		},
	}, {
		name: "bad endPort is skipped, never widened",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(numPort(tcp, 90, 80))),
				ingress(ports(numPort(tcp, 443), numPort(tcp, 100, 70000))),
			},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "1.2.3.4", tcp, 85, false),
			from("default/web", "1.2.3.4", tcp, 90, false),
			from("default/web", "1.2.3.4", tcp, 100, false),
			from("default/web", "1.2.3.4", tcp, 443, true),
		},
		problems: []string{
			"default/p: spec.ingress[0].ports[0].endPort: must be between port (90) and 65535, got 80",
			"default/p: spec.ingress[1].ports[1].endPort: must be between port (100) and 65535, got 70000",
		},
	}, {
		name: "named ports on ingress resolve against the endpoint",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(ports(
				namedPort(tcp, "http"), namedPort(udp, "dns"), namedPort(tcp, "dns")))},
		})},
		isolated: []string{"default/web in", "default/db in"},
		probes: []probe{
			from("default/web", "10.0.2.1", tcp, 8080, true),
			from("default/web", "8.8.8.8", udp, 53, true),
			from("default/web", "8.8.8.8", tcp, 53, false),
			from("default/web", "8.8.8.8", tcp, 8081, false),
			from("default/db", "8.8.8.8", tcp, 8081, true),
			from("default/db", "8.8.8.8", tcp, 8080, false),
			from("default/db", "8.8.8.8", udp, 53, false),
		},
	}, {
		name: "named port resolving to nothing allows nothing",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(ports(namedPort(tcp, "nope")))},
		})},
		isolated: []string{"default/web in"},
		probes:   []probe{from("default/web", "1.2.3.4", tcp, 8080, false), from("default/web", "1.2.3.4", tcp, 0, false)},
	}, {
		name: "named ports on egress resolve per destination pod",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			PolicyTypes: ptypes(egressT),
			Egress: []networkingv1.NetworkPolicyEgressRule{egress(ports(namedPort(tcp, "http")), networkingv1.NetworkPolicyPeer{
				NamespaceSelector: sel(), PodSelector: sel("app", "web"),
			})},
		})},
		isolated: []string{"default/web out"},
		probes: []probe{
			to("default/web", "10.0.1.1", tcp, 8080, true),
			to("default/web", "10.0.2.2", tcp, 9090, true),
			to("default/web", "10.0.2.2", tcp, 8080, false),
			to("default/web", "10.0.1.1", tcp, 9090, false),
			to("default/web", "10.0.1.2", tcp, 8081, false), // db has http but is not a peer
		},
	}, {
		name: "named ports on egress through an ipBlock covering pods",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			PolicyTypes: ptypes(egressT),
			Egress: []networkingv1.NetworkPolicyEgressRule{egress(ports(namedPort(tcp, "http"), numPort(tcp, 443)),
				ipPeer("10.0.0.0/16", "10.0.2.2/32"))},
		})},
		isolated: []string{"default/web out"},
		probes: []probe{
			to("default/web", "10.0.1.2", tcp, 8081, true),
			to("default/web", "10.0.1.2", tcp, 8080, false),
			to("default/web", "10.0.1.1", tcp, 8080, true),
			to("default/web", "10.0.2.2", tcp, 9090, false), // in the except
			to("default/web", "10.0.2.2", tcp, 443, false),
			to("default/web", "10.0.5.5", tcp, 8080, false), // no pod
			to("default/web", "10.0.5.5", tcp, 443, true),
			to("default/web", "10.0.1.2", tcp, 443, true),
			to("default/web", "10.0.9.1", tcp, 8080, false), // hostNetwork pod is not a pod peer
		},
	}, {
		name: "named ports on egress to everyone",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			PolicyTypes: ptypes(egressT),
			Egress:      []networkingv1.NetworkPolicyEgressRule{egress(ports(namedPort(tcp, "http")))},
		})},
		isolated: []string{"default/web out"},
		probes: []probe{
			to("default/web", "10.0.2.2", tcp, 9090, true),
			to("default/web", "10.0.1.1", tcp, 8080, true),
			to("default/web", "10.0.1.2", tcp, 8081, true),
			to("default/web", "10.0.2.1", tcp, 8080, false),
			to("default/web", "8.8.8.8", tcp, 8080, false),
		},
	}, {
		name: "bad CIDR is a problem, the rest of the policy applies",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(numPort(tcp, 80)), ipPeer("10.0.0/8"), podPeer(sel("app", "cli"))),
				ingress(ports(numPort(tcp, 22)), ipPeer("192.168.0.0/16")),
			},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.2.1", tcp, 80, true),
			from("default/web", "10.0.0.5", tcp, 80, false),
			from("default/web", "192.168.3.3", tcp, 22, true),
		},
		problems: []string{`default/p: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR "10.0.0/8"`},
	}, {
		name: "rule whose peers are all invalid is dropped, never widened",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress:     []networkingv1.NetworkPolicyIngressRule{ingress(nil, ipPeer("bogus"), podPeer(bogus))},
		})},
		isolated: []string{"default/web in"},
		probes:   []probe{from("default/web", "10.0.2.1", tcp, 80, false)},
		problems: []string{
			`default/p: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR "bogus"`,
			`default/p: spec.ingress[0].from[1].podSelector: *`,
		},
	}, {
		name: "except outside cidr is a problem and ignored",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil,
				ipPeer("10.0.0.0/16", "10.1.0.0/24", "10.0.1.0/24", "10.0.0.0/8", "nope"))},
		})},
		isolated: []string{"default/web in"},
		probes: []probe{
			from("default/web", "10.0.1.5", tcp, 80, false),
			from("default/web", "10.0.2.5", tcp, 80, true),
			from("default/web", "10.1.0.5", tcp, 80, false),
		},
		problems: []string{
			`default/p: spec.ingress[0].from[0].ipBlock.except[0]: "10.1.0.0/24" is not within cidr "10.0.0.0/16" (except ignored)`,
			`default/p: spec.ingress[0].from[0].ipBlock.except[2]: "10.0.0.0/8" is not within cidr "10.0.0.0/16" (except ignored)`,
			`default/p: spec.ingress[0].from[0].ipBlock.except[3]: invalid CIDR "nope"`,
		},
	}, {
		name: "malformed peers and ports",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			PolicyTypes: ptypes(ingressT, "Sideways"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(nil, networkingv1.NetworkPolicyPeer{}, networkingv1.NetworkPolicyPeer{
					IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}, PodSelector: sel()}),
				ingress(ports(numPort("ICMP", 1), numPort(tcp, 0), numPort(tcp, 70000),
					networkingv1.NetworkPolicyPort{EndPort: new(int32(5))}, numPort(tcp, 7))),
			},
		})},
		isolated: []string{"default/web in"},
		probes:   []probe{from("default/web", "10.0.2.1", tcp, 7, true), from("default/web", "10.0.2.1", tcp, 1, false)},
		problems: []string{
			`default/p: spec.ingress[0].from[0]: must specify podSelector, namespaceSelector or ipBlock`,
			`default/p: spec.ingress[0].from[1]: ipBlock may not be combined with podSelector or namespaceSelector`,
			`default/p: spec.ingress[1].ports[0].protocol: unsupported protocol "ICMP"`,
			`default/p: spec.ingress[1].ports[1].port: must be between 1 and 65535, got 0`,
			`default/p: spec.ingress[1].ports[2].port: must be between 1 and 65535, got 70000`,
			`default/p: spec.ingress[1].ports[3].endPort: may not be set without port`,
			`default/p: spec.policyTypes[1]: unsupported value "Sideways"`,
		},
	}, {
		name: "invalid podSelector of the policy: problem, selects nothing",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: *bogus,
			PolicyTypes: ptypes(ingressT),
		})},
		problems: []string{`default/p: spec.podSelector: *`},
	}, {
		name: "IPv6 is ignored without problems",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("default/p", networkingv1.NetworkPolicySpec{
			PodSelector: webSel,
			Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil,
				ipPeer("fd00::/8"), ipPeer("10.0.2.0/24", "fd00::/16"))},
		})},
		isolated: []string{"default/web in"},
		probes:   []probe{from("default/web", "10.0.2.1", tcp, 80, true), from("default/web", "10.0.3.1", tcp, 80, false)},
	}, {
		name: "policy in a namespace without pods or object",
		policies: []*networkingv1.NetworkPolicy{mkPolicy("ghost/p", networkingv1.NetworkPolicySpec{
			PolicyTypes: ptypes(ingressT),
		})},
	}}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			input := fixture()
			input.Policies = tc.policies
			st := Compile(input)
			checkState(t, st)

			var isolated []string
			for _, ep := range st.Endpoints {
				if ep.Ingress != nil {
					isolated = append(isolated, ep.Pod.String()+" in")
				}
				if ep.Egress != nil {
					isolated = append(isolated, ep.Pod.String()+" out")
				}
			}
			slices.Sort(isolated)
			wantIsolated := slices.Sorted(slices.Values(tc.isolated))
			if !slices.Equal(isolated, wantIsolated) {
				t.Errorf("isolated = %q, want %q", isolated, wantIsolated)
			}

			var problems []string
			for _, p := range st.Problems {
				problems = append(problems, p.Policy.String()+": "+p.Message)
			}
			if !slices.EqualFunc(problems, tc.problems, func(got, want string) bool {
				prefix, wild := strings.CutSuffix(want, "*")
				return got == want || wild && strings.HasPrefix(got, prefix)
			}) {
				t.Errorf("problems:\n%q\nwant\n%q", problems, tc.problems)
			}

			for _, p := range tc.probes {
				ep := endpoint(st, p.pod)
				if ep == nil {
					t.Fatalf("no endpoint %s", p.pod)
				}
				r, dir := ep.Ingress, "from"
				if p.egress {
					r, dir = ep.Egress, "to"
				}
				if got := lookup(r, netip.MustParseAddr(p.peer), p.proto, p.port); got != p.want {
					t.Errorf("%s %s %s %s/%d = %v, want %v", p.pod, dir, p.peer, p.proto, p.port, got, p.want)
				}
			}
			if tc.check != nil {
				tc.check(t, st)
			}
		})
	}
}

func TestMergePorts(t *testing.T) {
	a, b, c := nn("ns/a"), nn("ns/b"), nn("ns/c")
	tests := []struct {
		name     string
		in, want []PortRange
	}{
		{"empty", nil, nil},
		{"disjoint stay apart", []PortRange{{tcp, 90, 90, a}, {tcp, 80, 80, b}},
			[]PortRange{{tcp, 80, 80, b}, {tcp, 90, 90, a}}},
		{"adjacent join", []PortRange{{tcp, 81, 90, c}, {tcp, 80, 80, b}},
			[]PortRange{{tcp, 80, 90, b}}},
		{"overlap joins with least policy", []PortRange{{tcp, 80, 100, c}, {tcp, 90, 95, a}, {tcp, 101, 101, b}},
			[]PortRange{{tcp, 80, 101, a}}},
		{"protocols apart, sorted", []PortRange{{udp, 80, 80, a}, {tcp, 80, 80, a}, {sctp, 1, 2, a}},
			[]PortRange{{sctp, 1, 2, a}, {tcp, 80, 80, a}, {udp, 80, 80, a}}},
		{"full range", []PortRange{{tcp, 0, 65535, b}, {tcp, 65535, 65535, a}, {tcp, 0, 0, c}},
			[]PortRange{{tcp, 0, 65535, a}}},
		{"duplicates", []PortRange{{tcp, 5, 5, b}, {tcp, 5, 5, a}}, []PortRange{{tcp, 5, 5, a}}},
	}
	for _, tc := range tests {
		if got := mergePorts(slices.Clone(tc.in)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: mergePorts(%v) = %v, want %v", tc.name, tc.in, got, tc.want)
		}
	}
}
