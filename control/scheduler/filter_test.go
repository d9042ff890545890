package scheduler

import (
	"reflect"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

type filterCase struct {
	name     string
	node     *corev1.Node
	existing []*corev1.Pod
	pod      *corev1.Pod
	want     []string // nil: fits
}

func runFilterCases(t *testing.T, fn func(*cycle, *nodeInfo) []string, cases []filterCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, []*corev1.Node{tc.node}, tc.existing...)
			got := fn(w.cycle(tc.pod), w.node(tc.node.Name))
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFilterReady(t *testing.T) {
	runFilterCases(t, filterReady, []filterCase{
		{name: "ready", node: node("n", "1", "1Gi", 10), pod: pod("p")},
		{name: "not ready", node: node("n", "1", "1Gi", 10, notReady), pod: pod("p"), want: []string{reasonNotReady}},
		{name: "no conditions", node: node("n", "1", "1Gi", 10, func(n *corev1.Node) { n.Status.Conditions = nil }),
			pod: pod("p"), want: []string{reasonNotReady}},
		{name: "tolerates not-ready", node: node("n", "1", "1Gi", 10, notReady),
			pod: pod("p", toleration(taintNotReady, "", corev1.TolerationOpExists, corev1.TaintEffectNoSchedule))},
	})
}

func TestFilterUnschedulable(t *testing.T) {
	runFilterCases(t, filterUnschedulable, []filterCase{
		{name: "schedulable", node: node("n", "1", "1Gi", 10), pod: pod("p")},
		{name: "cordoned", node: node("n", "1", "1Gi", 10, unschedulableNode), pod: pod("p"), want: []string{reasonUnschedulable}},
		{name: "tolerates cordon", node: node("n", "1", "1Gi", 10, unschedulableNode),
			pod: pod("p", toleration(taintUnschedulable, "", corev1.TolerationOpExists, corev1.TaintEffectNoSchedule))},
	})
}

func TestFilterTaints(t *testing.T) {
	runFilterCases(t, filterTaints, []filterCase{
		{name: "no taints", node: node("n", "1", "1Gi", 10), pod: pod("p")},
		{name: "NoSchedule untolerated", node: node("n", "1", "1Gi", 10, withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule)),
			pod: pod("p"), want: []string{"node(s) had untolerated taint {dedicated: gpu}"}},
		{name: "NoExecute untolerated", node: node("n", "1", "1Gi", 10, withTaint("evict", "", corev1.TaintEffectNoExecute)),
			pod: pod("p"), want: []string{"node(s) had untolerated taint {evict: }"}},
		{name: "PreferNoSchedule does not filter", node: node("n", "1", "1Gi", 10, withTaint("soft", "x", corev1.TaintEffectPreferNoSchedule)),
			pod: pod("p")},
		{name: "tolerated by Equal", node: node("n", "1", "1Gi", 10, withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule)),
			pod: pod("p", toleration("dedicated", "gpu", corev1.TolerationOpEqual, corev1.TaintEffectNoSchedule))},
		{name: "wrong value not tolerated", node: node("n", "1", "1Gi", 10, withTaint("dedicated", "gpu", corev1.TaintEffectNoSchedule)),
			pod:  pod("p", toleration("dedicated", "cpu", corev1.TolerationOpEqual, corev1.TaintEffectNoSchedule)),
			want: []string{"node(s) had untolerated taint {dedicated: gpu}"}},
		{name: "tolerated by Exists with any effect", node: node("n", "1", "1Gi", 10, withTaint("evict", "", corev1.TaintEffectNoExecute)),
			pod: pod("p", toleration("evict", "", corev1.TolerationOpExists, ""))},
	})
}

func TestFilterNodeAffinity(t *testing.T) {
	required := func(op corev1.NodeSelectorOperator, values ...string) podOpt {
		return affinity(&corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: op, Values: values}},
			}}},
		}})
	}
	selector := func(kv ...string) podOpt {
		return func(p *corev1.Pod) {
			p.Spec.NodeSelector = map[string]string{}
			for i := 0; i+1 < len(kv); i += 2 {
				p.Spec.NodeSelector[kv[i]] = kv[i+1]
			}
		}
	}
	zoneA := node("n", "1", "1Gi", 10, withLabels("zone", "a", "disk", "ssd"))
	runFilterCases(t, filterNodeAffinity, []filterCase{
		{name: "nothing required", node: zoneA, pod: pod("p")},
		{name: "nodeSelector matches", node: zoneA, pod: pod("p", selector("disk", "ssd"))},
		{name: "nodeSelector misses", node: zoneA, pod: pod("p", selector("disk", "hdd")), want: []string{reasonNodeAffinity}},
		{name: "affinity In matches", node: zoneA, pod: pod("p", required(corev1.NodeSelectorOpIn, "a", "b"))},
		{name: "affinity In misses", node: zoneA, pod: pod("p", required(corev1.NodeSelectorOpIn, "b")), want: []string{reasonNodeAffinity}},
		{name: "affinity NotIn excludes", node: zoneA, pod: pod("p", required(corev1.NodeSelectorOpNotIn, "a")), want: []string{reasonNodeAffinity}},
		{name: "selector and affinity both needed", node: zoneA,
			pod: pod("p", selector("disk", "hdd"), required(corev1.NodeSelectorOpIn, "a")), want: []string{reasonNodeAffinity}},
	})
}

func TestFilterPorts(t *testing.T) {
	n := node("n", "1", "1Gi", 10)
	runFilterCases(t, filterPorts, []filterCase{
		{name: "no ports", node: n, existing: []*corev1.Pod{pod("e", onNode("n"), hostPortOpt(80, "", ""))}, pod: pod("p")},
		{name: "same port", node: n, existing: []*corev1.Pod{pod("e", onNode("n"), hostPortOpt(80, "", ""))},
			pod: pod("p", hostPortOpt(80, corev1.ProtocolTCP, "")), want: []string{reasonPorts}},
		{name: "other protocol", node: n, existing: []*corev1.Pod{pod("e", onNode("n"), hostPortOpt(80, corev1.ProtocolTCP, ""))},
			pod: pod("p", hostPortOpt(80, corev1.ProtocolUDP, ""))},
		{name: "other port", node: n, existing: []*corev1.Pod{pod("e", onNode("n"), hostPortOpt(80, "", ""))},
			pod: pod("p", hostPortOpt(81, "", ""))},
		{name: "distinct host IPs", node: n, existing: []*corev1.Pod{pod("e", onNode("n"), hostPortOpt(80, "", "10.0.0.1"))},
			pod: pod("p", hostPortOpt(80, "", "10.0.0.2"))},
		{name: "wildcard against specific IP", node: n, existing: []*corev1.Pod{pod("e", onNode("n"), hostPortOpt(80, "", "10.0.0.1"))},
			pod: pod("p", hostPortOpt(80, "", "0.0.0.0")), want: []string{reasonPorts}},
	})
}

func TestFilterResources(t *testing.T) {
	n := node("n", "2", "4Gi", 3)
	half := func(name string) *corev1.Pod { return pod(name, onNode("n"), requests("1", "2Gi")) }
	runFilterCases(t, filterResources, []filterCase{
		{name: "empty node", node: n, pod: pod("p", requests("2", "4Gi"))},
		{name: "exact fit", node: n, existing: []*corev1.Pod{half("e")}, pod: pod("p", requests("1", "2Gi"))},
		{name: "insufficient cpu", node: n, existing: []*corev1.Pod{half("e")}, pod: pod("p", requests("1500m", "1Gi")),
			want: []string{"Insufficient cpu"}},
		{name: "insufficient cpu and memory", node: n, existing: []*corev1.Pod{half("e")}, pod: pod("p", requests("2", "3Gi")),
			want: []string{"Insufficient cpu", "Insufficient memory"}},
		{name: "too many pods", node: n, existing: []*corev1.Pod{pod("a", onNode("n")), pod("b", onNode("n")), pod("c", onNode("n"))},
			pod: pod("p"), want: []string{reasonTooManyPods}},
		{name: "no requests fit anywhere", node: n, existing: []*corev1.Pod{half("a"), half("b")}, pod: pod("p")},
		{name: "extended resource absent", node: n, pod: pod("p", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{"example.com/gpu": *resourceQty("1")}
		}), want: []string{"Insufficient example.com/gpu"}},
	})
}

func TestFilterPodAffinity(t *testing.T) {
	zoned := []*corev1.Node{
		node("a1", "1", "1Gi", 10, withLabels("zone", "a")),
		node("a2", "1", "1Gi", 10, withLabels("zone", "a")),
		node("b1", "1", "1Gi", 10, withLabels("zone", "b")),
		node("x", "1", "1Gi", 10), // no zone label
	}
	wantAffinity := affinity(&corev1.Affinity{PodAffinity: &corev1.PodAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{podTerm("zone", "app", "db")}}})
	wantAnti := affinity(&corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{podTerm("zone", "app", "web")}}})
	db := pod("db", onNode("a1"), podLabels("app", "db"))
	web := pod("web1", onNode("a1"), podLabels("app", "web"), wantAnti)
	otherNS := pod("db-other", onNode("b1"), podLabels("app", "db"), func(p *corev1.Pod) { p.Namespace = "other" })
	cases := []struct {
		name     string
		existing []*corev1.Pod
		pod      *corev1.Pod
		want     map[string][]string // node -> reasons; missing: fits
	}{
		{name: "affinity to a zone with a match", existing: []*corev1.Pod{db}, pod: pod("p", wantAffinity),
			want: map[string][]string{"b1": {reasonPodAffinity}, "x": {reasonPodAffinity}}},
		{name: "affinity ignores other namespaces", existing: []*corev1.Pod{db, otherNS}, pod: pod("p", wantAffinity),
			want: map[string][]string{"b1": {reasonPodAffinity}, "x": {reasonPodAffinity}}},
		{name: "affinity with no match anywhere", existing: []*corev1.Pod{otherNS}, pod: pod("p", wantAffinity),
			want: map[string][]string{"a1": {reasonPodAffinity}, "a2": {reasonPodAffinity}, "b1": {reasonPodAffinity}, "x": {reasonPodAffinity}}},
		{name: "first pod of a self-affine group goes anywhere", pod: pod("p", wantAffinity, podLabels("app", "db"))},
		{name: "anti-affinity keeps out of the zone", existing: []*corev1.Pod{pod("w", onNode("a2"), podLabels("app", "web"))},
			pod:  pod("p", wantAnti, podLabels("app", "web")),
			want: map[string][]string{"a1": {reasonPodAntiAffinity}, "a2": {reasonPodAntiAffinity}}},
		{name: "existing pod's anti-affinity rejects us", existing: []*corev1.Pod{web}, pod: pod("p", podLabels("app", "web")),
			want: map[string][]string{"a1": {reasonExistingAntiAff}, "a2": {reasonExistingAntiAff}}},
		{name: "existing anti-affinity ignores non-matching pods", existing: []*corev1.Pod{web}, pod: pod("p", podLabels("app", "api"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, zoned, tc.existing...)
			cy := w.cycle(tc.pod)
			for _, n := range zoned {
				got := filterPodAffinity(cy, w.node(n.Name))
				if !reflect.DeepEqual(got, tc.want[n.Name]) {
					t.Errorf("node %s: got %q, want %q", n.Name, got, tc.want[n.Name])
				}
			}
		})
	}
}

// TestFitStopsAtFirstFailure checks that a node is counted once, under the
// first filter that rejects it, as upstream counts it.
func TestFitStopsAtFirstFailure(t *testing.T) {
	n := node("n", "1", "1Gi", 10, unschedulableNode, withTaint("k", "v", corev1.TaintEffectNoSchedule))
	w := newWorld(t, []*corev1.Node{n})
	got := fit(w.cycle(pod("p", requests("2", ""))), w.node("n"))
	if !reflect.DeepEqual(got, []string{reasonUnschedulable}) {
		t.Fatalf("got %q", got)
	}
}

func TestRemovedPodsFreeResources(t *testing.T) {
	n := node("n", "1", "1Gi", 10)
	w := newWorld(t, []*corev1.Node{n}, pod("e", onNode("n"), requests("1", "")))
	p := pod("p", requests("1", ""))
	if got := filterResources(w.cycle(p), w.node("n")); len(got) == 0 {
		t.Fatal("node full of e still fits p")
	}
	w.cache.removePod("uid-e")
	if got := filterResources(w.cycle(p), w.node("n")); len(got) != 0 {
		t.Fatalf("after e left: %q", got)
	}
}

func TestFilterPodAffinityNamespaceSelector(t *testing.T) {
	nodes := []*corev1.Node{node("a", "1", "1Gi", 10, withLabels("zone", "a")), node("b", "1", "1Gi", 10, withLabels("zone", "b"))}
	inTeam := pod("db", onNode("a"), podLabels("app", "db"), func(p *corev1.Pod) { p.Namespace = "team-ns" })
	elsewhere := pod("db2", onNode("b"), podLabels("app", "db"), func(p *corev1.Pod) { p.Namespace = "other-ns" })
	term := podTerm("zone", "app", "db")
	term.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "x"}}
	p := pod("p", affinity(&corev1.Affinity{PodAffinity: &corev1.PodAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{term}}}))
	w := newWorld(t, nodes, inTeam, elsewhere)
	ns := func(name string) labels.Set {
		if name == "team-ns" {
			return labels.Set{"team": "x"}
		}
		return nil
	}
	cy, err := newCycle(newPodInfo(p), w.cache.schedulable(), w.cache.imageNodes, ns, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if got := filterPodAffinity(cy, w.node("a")); got != nil {
		t.Errorf("node a, beside the selected namespace's pod: %q", got)
	}
	if got := filterPodAffinity(cy, w.node("b")); !reflect.DeepEqual(got, []string{reasonPodAffinity}) {
		t.Errorf("node b, beside a pod of an unselected namespace: %q", got)
	}
}
