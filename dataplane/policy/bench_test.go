package policy

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// benchInput is 1,000 pods in 20 namespaces (10 apps each) over `nodes` nodes, and 100
// policies: per namespace a default deny, app-to-app ingress with named ports,
// cross-namespace ingress, egress to an ipBlock with excepts, and egress with named ports to
// every namespace.
func benchInput(nodes int) Input {
	in := Input{NodeName: "node0"}
	for n := range 20 {
		ns := fmt.Sprintf("ns%d", n)
		in.Namespaces = append(in.Namespaces, mkNS(ns, map[string]string{"env": []string{"prod", "dev"}[n%2]}))
		for i := range 50 {
			k := n*50 + i
			addr := netip.AddrFrom4([4]byte{10, 244, byte(k / 250), byte(k%250 + 1)})
			in.Pods = append(in.Pods, mkPod(fmt.Sprintf("%s/pod%d", ns, i), addr.String(), fmt.Sprintf("node%d", k%nodes),
				map[string]string{"app": fmt.Sprintf("app%d", i%10)},
				cport("http", int32(8080+i%3), tcp), cport("metrics", 9090, tcp), cport("dns", 53, udp)))
		}
		app := func(i int) *metav1.LabelSelector { return sel("app", fmt.Sprintf("app%d", i)) }
		add := func(name string, spec networkingv1.NetworkPolicySpec) {
			in.Policies = append(in.Policies, mkPolicy(ns+"/"+name, spec))
		}
		add("deny", networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{"Ingress", "Egress"}})
		add("app-to-app", networkingv1.NetworkPolicySpec{
			PodSelector: *app(n % 10),
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(namedPort(tcp, "http"), numPort(tcp, 9090)), podPeer(app((n+1)%10)), podPeer(app((n+2)%10))),
			},
		})
		add("from-prod", networkingv1.NetworkPolicySpec{
			PodSelector: *app((n + 3) % 10),
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(ports(numPort(tcp, 8000, 8100)), networkingv1.NetworkPolicyPeer{
					NamespaceSelector: sel("env", "prod"), PodSelector: app(n % 10)}),
				ingress(nil, nsPeer(sel(v1.LabelMetadataName, "ns0"))),
			},
		})
		add("egress-block", networkingv1.NetworkPolicySpec{
			Egress: []networkingv1.NetworkPolicyEgressRule{
				egress(ports(numPort(tcp, 443), numPort(udp, 53)), ipPeer("10.0.0.0/8", "10.244.0.0/16", "10.96.0.0/12")),
				egress(ports(namedPort(tcp, "http")), ipPeer("10.244.0.0/18", "10.244.1.0/24")),
			},
		})
		add("egress-named", networkingv1.NetworkPolicySpec{
			PodSelector: *app((n + 5) % 10),
			Egress: []networkingv1.NetworkPolicyEgressRule{
				egress(ports(namedPort(tcp, "http"), namedPort(udp, "dns")), networkingv1.NetworkPolicyPeer{
					NamespaceSelector: sel(), PodSelector: app((n + 6) % 10)}),
			},
		})
	}
	return in
}

func BenchmarkCompile(b *testing.B) {
	for _, nodes := range []int{1, 10} {
		in := benchInput(nodes)
		b.Run(fmt.Sprintf("pods=1000/policies=100/nodes=%d", nodes), func(b *testing.B) {
			var st *State
			for b.Loop() {
				st = Compile(in)
			}
			entries := 0
			for _, ep := range st.Endpoints {
				for _, r := range []*Rules{ep.Ingress, ep.Egress} {
					if r != nil {
						entries += len(r.Entries)
					}
				}
			}
			b.ReportMetric(float64(len(st.Endpoints)), "endpoints")
			b.ReportMetric(float64(entries), "entries")
		})
	}
}

// TestBenchInput keeps the benchmark honest: its input must compile without problems and
// isolate every endpoint in both directions.
func TestBenchInput(t *testing.T) {
	st := Compile(benchInput(10))
	checkState(t, st)
	if len(st.Problems) != 0 || len(st.Endpoints) != 100 {
		t.Fatalf("problems %v, %d endpoints", st.Problems, len(st.Endpoints))
	}
	for _, ep := range st.Endpoints {
		if ep.Ingress == nil || ep.Egress == nil {
			t.Fatalf("%s not isolated", ep.Pod)
		}
	}
}
