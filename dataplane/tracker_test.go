package dataplane

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

const thisNode = "node-a"

func ptr[T any](v T) *T { return &v }

// svc builds a Service with one TCP port 80 named "http" unless mods say otherwise.
func svc(name string, mods ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

type epSpec struct {
	ip                          string
	node                        string
	ready, serving, terminating *bool
}

func ep(ip, node string, ready, serving, terminating bool) epSpec {
	return epSpec{ip: ip, node: node, ready: &ready, serving: &serving, terminating: &terminating}
}

func readyEP(ip, node string) epSpec { return ep(ip, node, true, true, false) }

// slice builds an IPv4 EndpointSlice of service svcName with port "http"/TCP 8080.
func slice(name, svcName string, eps ...epSpec) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name,
			Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(v1.ProtocolTCP)}},
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
			NodeName:   ptr(e.node),
		})
	}
	return s
}

func node(name string, ip string, cidr string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if ip != "" {
		n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeHostName, Address: name}, {Type: v1.NodeInternalIP, Address: ip}}
	}
	if cidr != "" {
		n.Spec.PodCIDR = cidr
		n.Spec.PodCIDRs = []string{cidr}
	}
	return n
}

// tgt is a ready target when usable, a terminating one otherwise.
func tgt(addr string, usable bool) Target {
	return Target{Addr: netip.MustParseAddr(addr), Port: 8080, Usable: usable, Ready: usable}
}

// fallback is a serving, terminating target usable only because no ready one is left.
func fallback(addr string) Target {
	return Target{Addr: netip.MustParseAddr(addr), Port: 8080, Usable: true}
}

func httpPort(name string) ServicePortName {
	return ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}, Port: "http", Protocol: v1.ProtocolTCP}
}

func newTestTracker(t *testing.T, rec record.EventRecorder, changed func()) *Tracker {
	t.Helper()
	tr, err := NewTracker(TrackerConfig{NodeName: thisNode, DefaultAlgorithm: AlgorithmRoundRobin, Recorder: rec, Changed: changed})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestSnapshotTargets(t *testing.T) {
	local := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}
	tests := []struct {
		name              string
		svc               *v1.Service
		slices            []*discovery.EndpointSlice
		cluster, external []Target
	}{
		{
			name:     "ready endpoints only",
			svc:      svc("web"),
			slices:   []*discovery.EndpointSlice{slice("web-1", "web", readyEP("10.244.1.2", "node-b"), readyEP("10.244.0.2", thisNode))},
			cluster:  []Target{tgt("10.244.0.2", true), tgt("10.244.1.2", true)},
			external: []Target{tgt("10.244.0.2", true), tgt("10.244.1.2", true)},
		},
		{
			name: "terminating keep flows, not-ready dropped",
			svc:  svc("web"),
			slices: []*discovery.EndpointSlice{slice("web-1", "web",
				readyEP("10.244.0.2", thisNode),
				ep("10.244.0.3", thisNode, false, true, true),   // serving, terminating
				ep("10.244.0.4", thisNode, false, false, true),  // terminating
				ep("10.244.0.5", thisNode, false, false, false), // not ready
			)},
			cluster:  []Target{tgt("10.244.0.2", true), tgt("10.244.0.3", false), tgt("10.244.0.4", false)},
			external: []Target{tgt("10.244.0.2", true), tgt("10.244.0.3", false), tgt("10.244.0.4", false)},
		},
		{
			name: "no ready: serving terminating take new connections",
			svc:  svc("web"),
			slices: []*discovery.EndpointSlice{slice("web-1", "web",
				ep("10.244.0.3", thisNode, false, true, true),
				ep("10.244.0.4", thisNode, false, false, true),
			)},
			cluster:  []Target{fallback("10.244.0.3"), tgt("10.244.0.4", false)},
			external: []Target{fallback("10.244.0.3"), tgt("10.244.0.4", false)},
		},
		{
			// The endpoint slice controller calls a terminating pod ready when its Service
			// publishes not-ready addresses; kube-proxy sends it new connections.
			name: "a terminating endpoint the slice calls ready is ready",
			svc:  svc("web"),
			slices: []*discovery.EndpointSlice{slice("web-1", "web",
				ep("10.244.0.3", thisNode, true, false, true),
			)},
			cluster:  []Target{tgt("10.244.0.3", true)},
			external: []Target{tgt("10.244.0.3", true)},
		},
		{
			name:     "externalTrafficPolicy Local: external uses local only",
			svc:      svc("web", local),
			slices:   []*discovery.EndpointSlice{slice("web-1", "web", readyEP("10.244.1.2", "node-b"), readyEP("10.244.0.2", thisNode))},
			cluster:  []Target{tgt("10.244.0.2", true), tgt("10.244.1.2", true)},
			external: []Target{tgt("10.244.0.2", true)},
		},
		{
			name:     "externalTrafficPolicy Local without local endpoints",
			svc:      svc("web", local),
			slices:   []*discovery.EndpointSlice{slice("web-1", "web", readyEP("10.244.1.2", "node-b"))},
			cluster:  []Target{tgt("10.244.1.2", true)},
			external: []Target{},
		},
		{
			name: "local fallback is per node: remote ready does not hide local serving-terminating",
			svc:  svc("web", local),
			slices: []*discovery.EndpointSlice{slice("web-1", "web",
				readyEP("10.244.1.2", "node-b"), ep("10.244.0.3", thisNode, false, true, true))},
			cluster:  []Target{tgt("10.244.1.2", true), tgt("10.244.0.3", false)},
			external: []Target{fallback("10.244.0.3")},
		},
		{
			name: "internalTrafficPolicy Local",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
			}),
			slices:   []*discovery.EndpointSlice{slice("web-1", "web", readyEP("10.244.1.2", "node-b"), readyEP("10.244.0.2", thisNode))},
			cluster:  []Target{tgt("10.244.0.2", true)},
			external: []Target{tgt("10.244.0.2", true), tgt("10.244.1.2", true)},
		},
		{
			name: "slices merged, duplicates dropped, other services ignored",
			svc:  svc("web"),
			slices: []*discovery.EndpointSlice{
				slice("web-2", "web", readyEP("10.244.0.9", thisNode), readyEP("10.244.0.2", thisNode)),
				slice("web-1", "web", readyEP("10.244.0.2", thisNode)),
				slice("db-1", "db", readyEP("10.244.0.7", thisNode)),
			},
			cluster:  []Target{tgt("10.244.0.2", true), tgt("10.244.0.9", true)},
			external: []Target{tgt("10.244.0.2", true), tgt("10.244.0.9", true)},
		},
		{
			name:     "no slices",
			svc:      svc("web"),
			cluster:  []Target{},
			external: []Target{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestTracker(t, nil, nil)
			tr.OnService(nil, tc.svc)
			for _, s := range tc.slices {
				tr.OnEndpointSlice(s)
			}
			sp := tr.Snapshot().Service(httpPort("web"))
			if sp == nil {
				t.Fatal("service port missing from snapshot")
			}
			if !reflect.DeepEqual(sp.ClusterTargets, tc.cluster) {
				t.Errorf("cluster targets\n got %v\nwant %v", sp.ClusterTargets, tc.cluster)
			}
			if !reflect.DeepEqual(sp.ExternalTargets, tc.external) {
				t.Errorf("external targets\n got %v\nwant %v", sp.ExternalTargets, tc.external)
			}
		})
	}
}

func TestSnapshotServiceFields(t *testing.T) {
	tests := []struct {
		name string
		svc  *v1.Service
		want []ServicePort // Endpoints and targets not compared
	}{
		{
			name: "clusterIP, default algorithm, protocol defaulted",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}, {Name: "http", Port: 80}}
			}),
			want: []ServicePort{
				{Name: ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "web"}, Port: "dns", Protocol: v1.ProtocolUDP},
					ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 53, Protocol: v1.ProtocolUDP, Algorithm: AlgorithmRoundRobin},
				{Name: httpPort("web"), ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80, Protocol: v1.ProtocolTCP, Algorithm: AlgorithmRoundRobin},
			},
		},
		{
			name: "loadbalancer with local policy, affinity, externalIPs, annotation",
			svc: svc("web", func(s *v1.Service) {
				s.Annotations = map[string]string{AlgorithmAnnotation: "source-hash"}
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalIPs = []string{"192.0.2.1"}
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 31000
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr(int32(600))}}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
					{IP: "198.51.100.1"},
					{IP: "198.51.100.2", IPMode: ptr(v1.LoadBalancerIPModeProxy)},
					{Hostname: "lb.example"},
				}
			}),
			want: []ServicePort{{
				Name: httpPort("web"), ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80, Protocol: v1.ProtocolTCP,
				NodePort: 30080, ExternalIPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")},
				LoadBalancerIPs:     []netip.Addr{netip.MustParseAddr("198.51.100.1")},
				ExternalPolicyLocal: true, HealthCheckNodePort: 31000,
				AffinityTimeout: 10 * time.Minute, Algorithm: AlgorithmSourceHash,
			}},
		},
		{
			name: "ClientIP affinity without config uses the 3h default",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			}),
			want: []ServicePort{{Name: httpPort("web"), ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80,
				Protocol: v1.ProtocolTCP, AffinityTimeout: 3 * time.Hour, Algorithm: AlgorithmRoundRobin}},
		},
		{
			name: "Local policy on a ClusterIP service means nothing",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: []ServicePort{{Name: httpPort("web"), ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 80,
				Protocol: v1.ProtocolTCP, Algorithm: AlgorithmRoundRobin}},
		},
		{name: "headless", svc: svc("web", func(s *v1.Service) {
			s.Spec.ClusterIP = v1.ClusterIPNone
			s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
		})},
		{name: "ExternalName", svc: svc("web", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeExternalName
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
		})},
		{name: "another proxy's", svc: svc("web", func(s *v1.Service) {
			s.Labels = map[string]string{labelServiceProxyName: "other"}
		})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestTracker(t, nil, nil)
			tr.OnService(nil, tc.svc)
			st := tr.Snapshot()
			var got []ServicePort
			for _, sp := range st.Services {
				c := *sp
				c.Endpoints, c.ClusterTargets, c.ExternalTargets = nil, nil, nil
				got = append(got, c)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("service ports\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestUnknownAlgorithmWarnsOnceAndFallsBack(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	tr := newTestTracker(t, rec, nil)
	bad := svc("web", func(s *v1.Service) { s.Annotations = map[string]string{AlgorithmAnnotation: "fastest"} })
	tr.OnService(nil, bad)
	if got := tr.Snapshot().Service(httpPort("web")).Algorithm; got != AlgorithmRoundRobin {
		t.Fatalf("algorithm %q, want the default %q", got, AlgorithmRoundRobin)
	}
	select {
	case e := <-rec.Events:
		if !strings.HasPrefix(e, "Warning UnknownLoadBalancingAlgorithm") || !strings.Contains(e, `"fastest"`) {
			t.Fatalf("event %q", e)
		}
	default:
		t.Fatal("no event for an unknown algorithm")
	}

	// An unrelated update of the same Service must not repeat the warning.
	again := bad.DeepCopy()
	again.Labels = map[string]string{"x": "y"}
	tr.OnService(bad, again)
	select {
	case e := <-rec.Events:
		t.Fatalf("repeated event %q", e)
	default:
	}
}

func TestChangedOnlyOnRealChange(t *testing.T) {
	n := 0
	tr := newTestTracker(t, nil, func() { n++ })
	s := svc("web")
	tr.OnService(nil, s)
	sl := slice("web-1", "web", readyEP("10.244.0.2", thisNode))
	tr.OnEndpointSlice(sl)
	if n != 2 {
		t.Fatalf("changed called %d times, want 2", n)
	}
	// Same content, new resourceVersion: nothing to sync.
	s2 := s.DeepCopy()
	s2.ResourceVersion = "2"
	tr.OnService(s, s2)
	sl2 := sl.DeepCopy()
	sl2.ResourceVersion = "2"
	tr.OnEndpointSlice(sl2)
	if n != 2 {
		t.Fatalf("changed called %d times after no-op updates, want 2", n)
	}
	sl3 := slice("web-1", "web", ep("10.244.0.2", thisNode, false, true, true))
	tr.OnEndpointSlice(sl3)
	if n != 3 {
		t.Fatalf("changed not called for an endpoint becoming terminating (%d)", n)
	}
	tr.OnServiceDelete(s2)
	tr.OnServiceDelete(s2) // repeated delete: nothing changes
	if n != 4 {
		t.Fatalf("changed called %d times after deletes, want 4", n)
	}
	if got := len(tr.Snapshot().Services); got != 0 {
		t.Fatalf("%d service ports after delete", got)
	}
}

func TestSnapshotNodes(t *testing.T) {
	tr := newTestTracker(t, nil, nil)
	tr.OnNode(node(thisNode, "192.168.1.10", "10.244.0.0/24"))
	tr.OnNode(node("node-c", "192.168.1.12", "10.244.2.0/24"))
	tr.OnNode(node("node-b", "192.168.1.11", "10.244.1.0/24"))
	tr.OnNode(node("node-d", "", "10.244.3.0/24")) // no address yet: no route
	st := tr.Snapshot()
	if want := []netip.Addr{netip.MustParseAddr("192.168.1.10")}; !reflect.DeepEqual(st.NodeAddrs, want) {
		t.Errorf("node addrs %v, want %v", st.NodeAddrs, want)
	}
	want := []Route{
		{Node: "node-b", PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), NodeIP: netip.MustParseAddr("192.168.1.11")},
		{Node: "node-c", PodCIDR: netip.MustParsePrefix("10.244.2.0/24"), NodeIP: netip.MustParseAddr("192.168.1.12")},
	}
	if !reflect.DeepEqual(st.Routes, want) {
		t.Errorf("routes\n got %v\nwant %v", st.Routes, want)
	}
	tr.OnNodeDelete(node("node-b", "", ""))
	if got := len(tr.Snapshot().Routes); got != 1 {
		t.Errorf("%d routes after deleting a node, want 1", got)
	}
	// Snapshots are independent of later changes.
	if len(st.Routes) != 2 {
		t.Error("an old snapshot changed")
	}
}

// TestTrackerWithInformers runs the tracker behind real informers on a fake clientset.
func TestTrackerWithInformers(t *testing.T) {
	cs := fake.NewClientset(
		svc("web", func(s *v1.Service) { s.Annotations = map[string]string{AlgorithmAnnotation: "least-conn"} }),
		slice("web-1", "web", readyEP("10.244.0.2", thisNode)),
		node(thisNode, "192.168.1.10", "10.244.0.0/24"),
	)
	changed := make(chan struct{}, 100)
	tr := newTestTracker(t, nil, func() { changed <- struct{}{} })
	f := informers.NewSharedInformerFactory(cs, 0)
	if err := tr.Register(f); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); f.Shutdown() })
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), tr.HasSynced) {
		t.Fatal("tracker never synced")
	}
	st := tr.Snapshot()
	sp := st.Service(httpPort("web"))
	if sp == nil || sp.Algorithm != AlgorithmLeastConn || len(sp.ClusterTargets) != 1 {
		t.Fatalf("snapshot from informers wrong: %+v", sp)
	}
	if len(st.NodeAddrs) != 1 {
		t.Fatalf("node addrs %v", st.NodeAddrs)
	}

	if err := cs.DiscoveryV1().EndpointSlices("default").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for len(tr.Snapshot().Service(httpPort("web")).ClusterTargets) != 0 {
		select {
		case <-changed:
		case <-deadline:
			t.Fatal("slice deletion never reached the tracker")
		}
	}
}
