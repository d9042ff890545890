package scheduler

import (
	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

const maxScore = 100

// Image locality bounds from upstream: below 23MB an image is not worth
// chasing; 1000MB per container is as good as it gets.
const (
	minImageSize int64 = 23 << 20
	maxImageSize int64 = 1000 << 20
)

// scorer rates every feasible node 0..maxScore; weights follow upstream's
// default profile.
type scorer struct {
	name   string
	weight int64
	fn     func(cy *cycle, nodes []*nodeInfo, totalNodes int) []int64
}

func scorers() []scorer {
	return []scorer{
		{"TaintToleration", 3, scoreTaints},
		{"NodeAffinity", 2, scoreNodeAffinity},
		{"InterPodAffinity", 2, scorePodAffinity},
		{"SelectorSpread", 2, scoreSpread},
		{"NodeResourcesLeastAllocated", 1, scoreLeastAllocated},
		{"NodeResourcesBalancedAllocation", 1, scoreBalanced},
		{"ImageLocality", 1, scoreImageLocality},
	}
}

// totalScores sums the weighted scores of nodes; totalNodes counts all
// nodes, feasible or not, for image spreading.
func totalScores(cy *cycle, nodes []*nodeInfo, totalNodes int) []int64 {
	total := make([]int64, len(nodes))
	for _, s := range scorers() {
		for i, v := range s.fn(cy, nodes, totalNodes) {
			total[i] += s.weight * v
		}
	}
	return total
}

// fraction is requested/allocatable after adding the pod, capped at 1.
func fraction(requested, allocatable int64) float64 {
	if allocatable <= 0 || requested >= allocatable {
		return 1
	}
	return float64(requested) / float64(allocatable)
}

func scoreLeastAllocated(cy *cycle, nodes []*nodeInfo, _ int) []int64 {
	out := make([]int64, len(nodes))
	for i, n := range nodes {
		cpu := 1 - fraction(n.nonZeroCPU+cy.pi.nonZeroCPU, n.allocatable[corev1.ResourceCPU])
		mem := 1 - fraction(n.nonZeroMem+cy.pi.nonZeroMem, n.allocatable[corev1.ResourceMemory])
		out[i] = int64((cpu + mem) / 2 * maxScore)
	}
	return out
}

// scoreBalanced prefers nodes whose cpu and memory would be used in equal
// proportion; for two resources the standard deviation is half the gap.
func scoreBalanced(cy *cycle, nodes []*nodeInfo, _ int) []int64 {
	out := make([]int64, len(nodes))
	for i, n := range nodes {
		cpu := fraction(n.nonZeroCPU+cy.pi.nonZeroCPU, n.allocatable[corev1.ResourceCPU])
		mem := fraction(n.nonZeroMem+cy.pi.nonZeroMem, n.allocatable[corev1.ResourceMemory])
		d := cpu - mem
		if d < 0 {
			d = -d
		}
		out[i] = int64((1 - d/2) * maxScore)
	}
	return out
}

// scoreImageLocality favours nodes that already hold the pod's images,
// scaled by how widely each image is spread so one node does not attract
// every pod of an image (upstream's formula).
func scoreImageLocality(cy *cycle, nodes []*nodeInfo, totalNodes int) []int64 {
	out := make([]int64, len(nodes))
	containers := len(cy.pi.pod.Spec.InitContainers) + len(cy.pi.pod.Spec.Containers)
	if totalNodes == 0 || containers == 0 {
		return out
	}
	hi := maxImageSize * int64(containers)
	for i, n := range nodes {
		var sum int64
		for _, cs := range [][]corev1.Container{cy.pi.pod.Spec.InitContainers, cy.pi.pod.Spec.Containers} {
			for _, c := range cs {
				img := normalizeImage(c.Image)
				if size, ok := n.images[img]; ok {
					sum += int64(float64(size) * float64(cy.imageNodes[img]) / float64(totalNodes))
				}
			}
		}
		sum = max(minImageSize, min(sum, hi))
		out[i] = maxScore * (sum - minImageSize) / (hi - minImageSize)
	}
	return out
}

// scoreSpread prefers nodes with fewer pods of the pod's controller.
func scoreSpread(cy *cycle, nodes []*nodeInfo, _ int) []int64 {
	out := make([]int64, len(nodes))
	if cy.pi.owner == "" {
		return out
	}
	var most int
	for _, n := range nodes {
		most = max(most, n.ownerCount[cy.pi.owner])
	}
	for i, n := range nodes {
		if most == 0 {
			out[i] = maxScore
			continue
		}
		out[i] = int64(maxScore * (most - n.ownerCount[cy.pi.owner]) / most)
	}
	return out
}

func scoreNodeAffinity(cy *cycle, nodes []*nodeInfo, _ int) []int64 {
	out := make([]int64, len(nodes))
	a := cy.pi.pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || len(a.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		return out
	}
	terms, err := nodeaffinity.NewPreferredSchedulingTerms(a.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution)
	if err != nil {
		return out // invalid preferences prefer nothing
	}
	var most int64
	for i, n := range nodes {
		out[i] = terms.Score(n.node)
		most = max(most, out[i])
	}
	if most > 0 {
		for i := range out {
			out[i] = out[i] * maxScore / most
		}
	}
	return out
}

// scoreTaints prefers nodes with fewer untolerated PreferNoSchedule taints.
func scoreTaints(cy *cycle, nodes []*nodeInfo, _ int) []int64 {
	out := make([]int64, len(nodes))
	var most int64
	for i, n := range nodes {
		for j := range n.node.Spec.Taints {
			t := &n.node.Spec.Taints[j]
			if t.Effect == corev1.TaintEffectPreferNoSchedule &&
				!corev1helpers.TolerationsTolerateTaint(cy.logger, cy.pi.pod.Spec.Tolerations, t, enableTaintComparisons) {
				out[i]++
			}
		}
		most = max(most, out[i])
	}
	for i := range out {
		if most == 0 {
			out[i] = maxScore
		} else {
			out[i] = (most - out[i]) * maxScore / most
		}
	}
	return out
}

// scorePodAffinity maps preferred (anti-)affinity sums to 0..maxScore
// between the lowest and highest node.
func scorePodAffinity(cy *cycle, nodes []*nodeInfo, _ int) []int64 {
	out := make([]int64, len(nodes))
	if cy.affinity == nil || len(cy.affinity.score) == 0 {
		return out
	}
	lo, hi := int64(0), int64(0)
	for i, n := range nodes {
		out[i] = cy.affinity.nodeScore(n.node.Labels)
		if i == 0 {
			lo, hi = out[i], out[i]
		}
		lo, hi = min(lo, out[i]), max(hi, out[i])
	}
	for i := range out {
		if hi > lo {
			out[i] = (out[i] - lo) * maxScore / (hi - lo)
		} else {
			out[i] = 0
		}
	}
	return out
}
