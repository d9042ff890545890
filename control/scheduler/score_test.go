package scheduler

import (
	"math/rand/v2"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

type scoreCase struct {
	name     string
	nodes    []*corev1.Node
	existing []*corev1.Pod
	pod      *corev1.Pod
	want     []int64 // per node, in name order
}

func runScoreCases(t *testing.T, fn func(*cycle, []*nodeInfo, int) []int64, cases []scoreCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.nodes, tc.existing...)
			nodes := w.cache.schedulable()
			got := fn(w.cycle(tc.pod), nodes, len(nodes))
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestScoreLeastAllocated(t *testing.T) {
	two := []*corev1.Node{node("a", "4", "4Gi", 10), node("b", "4", "4Gi", 10)}
	runScoreCases(t, scoreLeastAllocated, []scoreCase{
		{name: "empty nodes equal", nodes: two, pod: pod("p", requests("1", "1Gi")), want: []int64{75, 75}},
		{name: "busier node scores lower", nodes: two, existing: []*corev1.Pod{pod("e", onNode("a"), requests("2", "2Gi"))},
			pod: pod("p", requests("1", "1Gi")), want: []int64{25, 75}},
		// No requests count as 100m and 200Mi, so empty pods still spread.
		{name: "defaults for missing requests", nodes: two, existing: []*corev1.Pod{pod("e", onNode("a"))},
			pod: pod("p", requests("1", "1Gi")), want: []int64{71, 75}},
		{name: "overcommitted is zero", nodes: two, existing: []*corev1.Pod{pod("e", onNode("a"), requests("4", "4Gi"))},
			pod: pod("p", requests("1", "1Gi")), want: []int64{0, 75}},
	})
}

func TestScoreBalanced(t *testing.T) {
	runScoreCases(t, scoreBalanced, []scoreCase{
		{name: "balanced beats lopsided",
			nodes: []*corev1.Node{node("a", "4", "4Gi", 10), node("b", "4", "16Gi", 10)},
			pod:   pod("p", requests("2", "2Gi")),
			// a: 50% cpu, 50% mem; b: 50% cpu, 12.5% mem.
			want: []int64{100, 81}},
	})
}

func TestScoreImageLocality(t *testing.T) {
	const big = 500 << 20
	nodes := []*corev1.Node{
		node("a", "1", "1Gi", 10, withImage(big, "docker.io/library/app:latest", "app:latest")),
		node("b", "1", "1Gi", 10),
		node("c", "1", "1Gi", 10, withImage(10<<20, "tiny:1")),
	}
	runScoreCases(t, scoreImageLocality, []scoreCase{
		// 500MB seen on 1 of 3 nodes: 166MB scaled between 23MB and 1000MB.
		{name: "node with the image scores", nodes: nodes, pod: pod("p", image("app")), want: []int64{14, 0, 0}},
		{name: "image below the threshold scores nothing", nodes: nodes, pod: pod("p", image("tiny:1")), want: []int64{0, 0, 0}},
		{name: "unknown image", nodes: nodes, pod: pod("p", image("other")), want: []int64{0, 0, 0}},
	})
}

func TestScoreSpread(t *testing.T) {
	nodes := []*corev1.Node{node("a", "1", "1Gi", 10), node("b", "1", "1Gi", 10), node("c", "1", "1Gi", 10)}
	runScoreCases(t, scoreSpread, []scoreCase{
		{name: "no owner is neutral", nodes: nodes, existing: []*corev1.Pod{pod("e", onNode("a"), ownedBy("rs1"))},
			pod: pod("p"), want: []int64{0, 0, 0}},
		{name: "no siblings yet", nodes: nodes, pod: pod("p", ownedBy("rs1")), want: []int64{100, 100, 100}},
		{name: "fewer siblings scores higher", nodes: nodes,
			existing: []*corev1.Pod{pod("e1", onNode("a"), ownedBy("rs1")), pod("e2", onNode("a"), ownedBy("rs1")),
				pod("e3", onNode("b"), ownedBy("rs1")), pod("o", onNode("c"), ownedBy("rs2"))},
			pod: pod("p", ownedBy("rs1")), want: []int64{0, 50, 100}},
	})
}

func TestScoreNodeAffinity(t *testing.T) {
	nodes := []*corev1.Node{
		node("a", "1", "1Gi", 10, withLabels("zone", "a", "disk", "ssd")),
		node("b", "1", "1Gi", 10, withLabels("zone", "b", "disk", "ssd")),
		node("c", "1", "1Gi", 10, withLabels("zone", "c")),
	}
	pref := func(w int32, key, value string) corev1.PreferredSchedulingTerm {
		return corev1.PreferredSchedulingTerm{Weight: w, Preference: corev1.NodeSelectorTerm{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: corev1.NodeSelectorOpIn, Values: []string{value}}}}}
	}
	runScoreCases(t, scoreNodeAffinity, []scoreCase{
		{name: "no preferences", nodes: nodes, pod: pod("p"), want: []int64{0, 0, 0}},
		{name: "weighted preferences", nodes: nodes, pod: pod("p", affinity(&corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{pref(80, "zone", "a"), pref(20, "disk", "ssd")},
		}})), want: []int64{100, 20, 0}},
	})
}

func TestScoreTaints(t *testing.T) {
	nodes := []*corev1.Node{
		node("a", "1", "1Gi", 10),
		node("b", "1", "1Gi", 10, withTaint("soft", "x", corev1.TaintEffectPreferNoSchedule)),
		node("c", "1", "1Gi", 10, withTaint("soft", "x", corev1.TaintEffectPreferNoSchedule), withTaint("soft2", "", corev1.TaintEffectPreferNoSchedule)),
	}
	runScoreCases(t, scoreTaints, []scoreCase{
		{name: "fewer soft taints is better", nodes: nodes, pod: pod("p"), want: []int64{100, 50, 0}},
		{name: "tolerated taints do not count", nodes: nodes,
			pod: pod("p", toleration("soft", "", corev1.TolerationOpExists, "")), want: []int64{100, 100, 0}},
	})
}

func TestScorePodAffinity(t *testing.T) {
	nodes := []*corev1.Node{
		node("a", "1", "1Gi", 10, withLabels("zone", "a")),
		node("b", "1", "1Gi", 10, withLabels("zone", "b")),
		node("c", "1", "1Gi", 10, withLabels("zone", "c")),
	}
	cache := pod("cache", onNode("a"), podLabels("app", "cache"))
	noisy := pod("noisy", onNode("b"), podLabels("app", "noisy"))
	prefer := affinity(&corev1.Affinity{
		PodAffinity: &corev1.PodAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{
			{Weight: 10, PodAffinityTerm: podTerm("zone", "app", "cache")}}},
		PodAntiAffinity: &corev1.PodAntiAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{
			{Weight: 10, PodAffinityTerm: podTerm("zone", "app", "noisy")}}},
	})
	// An existing pod that prefers company of app=web draws web pods.
	likesWeb := pod("likes", onNode("c"), podLabels("app", "x"), affinity(&corev1.Affinity{
		PodAffinity: &corev1.PodAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{
			{Weight: 5, PodAffinityTerm: podTerm("zone", "app", "web")}}}}))
	runScoreCases(t, scorePodAffinity, []scoreCase{
		{name: "no terms", nodes: nodes, existing: []*corev1.Pod{cache, noisy}, pod: pod("p"), want: []int64{0, 0, 0}},
		{name: "affinity up, anti-affinity down", nodes: nodes, existing: []*corev1.Pod{cache, noisy}, pod: pod("p", prefer),
			want: []int64{100, 0, 50}},
		{name: "existing pods' preferences count", nodes: nodes, existing: []*corev1.Pod{likesWeb}, pod: pod("p", podLabels("app", "web")),
			want: []int64{0, 0, 100}},
	})
}

func TestSelectNodeBreaksTiesWithRand(t *testing.T) {
	nodes := []*corev1.Node{node("a", "1", "1Gi", 10), node("b", "1", "1Gi", 10), node("c", "1", "1Gi", 10)}
	w := newWorld(t, nodes)
	cy := w.cycle(pod("p"))
	picked := map[string]bool{}
	for seed := uint64(0); seed < 30; seed++ {
		n1, _ := selectNode(cy, w.cache.schedulable(), rand.New(rand.NewPCG(seed, 0)))
		n2, _ := selectNode(cy, w.cache.schedulable(), rand.New(rand.NewPCG(seed, 0)))
		if n1.node.Name != n2.node.Name {
			t.Fatalf("seed %d picked %s then %s", seed, n1.node.Name, n2.node.Name)
		}
		picked[n1.node.Name] = true
	}
	if len(picked) != 3 {
		t.Fatalf("30 seeds picked only %v among three equal nodes", picked)
	}
}

func TestSelectNodePrefersHigherScore(t *testing.T) {
	nodes := []*corev1.Node{node("a", "4", "4Gi", 10), node("b", "4", "4Gi", 10)}
	w := newWorld(t, nodes, pod("e", onNode("a"), requests("3", "3Gi")))
	for seed := uint64(0); seed < 10; seed++ {
		n, _ := selectNode(w.cycle(pod("p", requests("100m", "100Mi"))), w.cache.schedulable(), rand.New(rand.NewPCG(seed, 0)))
		if n.node.Name != "b" {
			t.Fatalf("seed %d picked %s, want the emptier b", seed, n.node.Name)
		}
	}
}

func TestSelectNodeCountsReasons(t *testing.T) {
	nodes := []*corev1.Node{
		node("a", "1", "1Gi", 10),
		node("b", "1", "1Gi", 10),
		node("c", "8", "8Gi", 10, withTaint("dedicated", "db", corev1.TaintEffectNoSchedule)),
	}
	w := newWorld(t, nodes)
	n, reasons := selectNode(w.cycle(pod("p", requests("2", ""))), w.cache.schedulable(), rand.New(rand.NewPCG(1, 1)))
	if n != nil {
		t.Fatalf("placed on %s", n.node.Name)
	}
	want := map[string]int{"Insufficient cpu": 2, "node(s) had untolerated taint {dedicated: db}": 1}
	if !reflect.DeepEqual(reasons, want) {
		t.Fatalf("reasons %v, want %v", reasons, want)
	}
	if got, w := unschedulableMessage(3, reasons), "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, 2 Insufficient cpu."; got != w {
		t.Fatalf("message %q, want %q", got, w)
	}
}
