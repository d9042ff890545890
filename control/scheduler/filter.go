package scheduler

import (
	"fmt"
	"sort"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// Reasons a node is filtered out, worded as upstream's plugins word them so
// that tools and people reading FailedScheduling events see familiar text.
const (
	reasonNotReady         = "node(s) were not ready"
	reasonUnschedulable    = "node(s) were unschedulable"
	reasonNodeAffinity     = "node(s) didn't match Pod's node affinity/selector"
	reasonPorts            = "node(s) didn't have free ports for the requested pod ports"
	reasonTooManyPods      = "Too many pods"
	reasonPodAffinity      = "node(s) didn't match pod affinity rules"
	reasonPodAntiAffinity  = "node(s) didn't match pod anti-affinity rules"
	reasonExistingAntiAff  = "node(s) didn't satisfy existing pods anti-affinity rules"
	taintNotReady          = "node.kubernetes.io/not-ready"
	taintUnschedulable     = "node.kubernetes.io/unschedulable"
	enableTaintComparisons = false // alpha upstream (TaintTolerationComparisonOperators)
)

// cycle is one attempt to place one pod: the pod and what is computed once
// for it rather than once per node.
type cycle struct {
	pi           *podInfo
	nodeAffinity nodeaffinity.RequiredNodeAffinity
	affinity     *affinityState
	imageNodes   map[string]int // nodes holding each image
	logger       logr.Logger
}

func newCycle(pi *podInfo, nodes []*nodeInfo, imageNodes map[string]int, ns nsLabels, logger logr.Logger) (*cycle, error) {
	aff, err := newAffinityState(pi.pod, nodes, ns)
	if err != nil {
		return nil, err
	}
	return &cycle{
		pi:           pi,
		nodeAffinity: nodeaffinity.GetRequiredNodeAffinity(pi.pod),
		affinity:     aff,
		imageNodes:   imageNodes,
		logger:       logger,
	}, nil
}

// filter returns why a node cannot take the pod, or nothing if it can.
type filter struct {
	name string
	fn   func(cy *cycle, n *nodeInfo) []string
}

// filters lists the filters in upstream's order; the first that fails
// decides the reasons.
func filters() []filter {
	return []filter{
		{"NodeReady", filterReady},
		{"NodeUnschedulable", filterUnschedulable},
		{"TaintToleration", filterTaints},
		{"NodeAffinity", filterNodeAffinity},
		{"NodePorts", filterPorts},
		{"NodeResourcesFit", filterResources},
		{"InterPodAffinity", filterPodAffinity},
	}
}

// fit runs the filters on a node and returns the reasons of the first to fail.
func fit(cy *cycle, n *nodeInfo) []string {
	for _, f := range filters() {
		if r := f.fn(cy, n); len(r) > 0 {
			return r
		}
	}
	return nil
}

func tolerates(cy *cycle, key string, effects ...corev1.TaintEffect) bool {
	for _, e := range effects {
		t := corev1.Taint{Key: key, Effect: e}
		if !corev1helpers.TolerationsTolerateTaint(cy.logger, cy.pi.pod.Spec.Tolerations, &t, enableTaintComparisons) {
			return false
		}
	}
	return true
}

func filterReady(cy *cycle, n *nodeInfo) []string {
	for _, c := range n.node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			return nil
		}
	}
	// Pods that tolerate not-ready nodes (DaemonSet pods do) may go there,
	// as the node lifecycle taint would let them.
	if tolerates(cy, taintNotReady, corev1.TaintEffectNoSchedule) {
		return nil
	}
	return []string{reasonNotReady}
}

func filterUnschedulable(cy *cycle, n *nodeInfo) []string {
	if !n.node.Spec.Unschedulable || tolerates(cy, taintUnschedulable, corev1.TaintEffectNoSchedule) {
		return nil
	}
	return []string{reasonUnschedulable}
}

func filterTaints(cy *cycle, n *nodeInfo) []string {
	taint, bad := corev1helpers.FindMatchingUntoleratedTaint(cy.logger, n.node.Spec.Taints, cy.pi.pod.Spec.Tolerations,
		func(t *corev1.Taint) bool {
			return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
		}, enableTaintComparisons)
	if !bad {
		return nil
	}
	return []string{fmt.Sprintf("node(s) had untolerated taint {%s: %s}", taint.Key, taint.Value)}
}

func filterNodeAffinity(cy *cycle, n *nodeInfo) []string {
	// A malformed selector matches nothing, as upstream treats it.
	if ok, err := cy.nodeAffinity.Match(n.node); err != nil || !ok {
		return []string{reasonNodeAffinity}
	}
	return nil
}

func filterPorts(cy *cycle, n *nodeInfo) []string {
	if len(cy.pi.ports) == 0 {
		return nil
	}
	for _, other := range n.pods {
		for _, a := range other.ports {
			for _, b := range cy.pi.ports {
				if a.conflicts(b) {
					return []string{reasonPorts}
				}
			}
		}
	}
	return nil
}

func filterResources(cy *cycle, n *nodeInfo) []string {
	var reasons []string
	if int64(len(n.pods))+1 > n.allocatable[corev1.ResourcePods] {
		reasons = append(reasons, reasonTooManyPods)
	}
	names := make([]corev1.ResourceName, 0, len(cy.pi.requests))
	for name, v := range cy.pi.requests {
		if v > 0 {
			names = append(names, name)
		}
	}
	// Upstream lists cpu, memory, then the rest; sort for a stable message.
	rank := func(r corev1.ResourceName) string {
		switch r {
		case corev1.ResourceCPU:
			return "0"
		case corev1.ResourceMemory:
			return "1"
		case corev1.ResourceEphemeralStorage:
			return "2"
		}
		return "3" + string(r)
	}
	sort.Slice(names, func(i, j int) bool { return rank(names[i]) < rank(names[j]) })
	for _, name := range names {
		if cy.pi.requests[name] > n.allocatable[name]-n.requested[name] {
			reasons = append(reasons, "Insufficient "+string(name))
		}
	}
	return reasons
}

func filterPodAffinity(cy *cycle, n *nodeInfo) []string {
	s := cy.affinity
	if s == nil {
		return nil
	}
	labels := n.node.Labels
	if !s.satisfiesAffinity(labels) {
		return []string{reasonPodAffinity}
	}
	for i, t := range s.anti {
		if v, ok := labels[t.topologyKey]; ok && s.antiCounts[i][v] > 0 {
			return []string{reasonPodAntiAffinity}
		}
	}
	for p := range s.existingAnti {
		if v, ok := labels[p.key]; ok && v == p.value {
			return []string{reasonExistingAntiAff}
		}
	}
	return nil
}
