package daemonset

import (
	"encoding/json"
	"fmt"
	"hash/fnv"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// Taint keys the node lifecycle controller and kubelet set; DaemonSet pods
// tolerate them because a node agent must run exactly when the node is
// struggling.
const (
	taintNotReady       = "node.kubernetes.io/not-ready"
	taintUnreachable    = "node.kubernetes.io/unreachable"
	taintDiskPressure   = "node.kubernetes.io/disk-pressure"
	taintMemoryPressure = "node.kubernetes.io/memory-pressure"
	taintPIDPressure    = "node.kubernetes.io/pid-pressure"
	taintUnschedulable  = "node.kubernetes.io/unschedulable"

	// enableTaintComparisons is alpha upstream (TaintTolerationComparisonOperators);
	// the scheduler keeps it off too, so both agree on what a toleration means.
	enableTaintComparisons = false
)

// daemonTolerations are added to every DaemonSet pod, as upstream does.
// NoExecute ones carry no tolerationSeconds so the pod is never evicted.
func daemonTolerations() []corev1.Toleration {
	return []corev1.Toleration{
		{Key: taintNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
		{Key: taintUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
		{Key: taintDiskPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		{Key: taintMemoryPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		{Key: taintPIDPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		{Key: taintUnschedulable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	}
}

// addDaemonTolerations appends the standard tolerations the template does
// not already have, so a user's own (e.g. with tolerationSeconds) wins.
func addDaemonTolerations(spec *corev1.PodSpec) {
	for _, t := range daemonTolerations() {
		found := false
		for _, have := range spec.Tolerations {
			if have.Key == t.Key && have.Effect == t.Effect && have.Operator == t.Operator {
				found = true
				break
			}
		}
		if !found {
			spec.Tolerations = append(spec.Tolerations, t)
		}
	}
}

// templatePod is the pod the DaemonSet would create, before it is bound to
// a node; eligibility is judged on it so that the standard tolerations count.
func templatePod(ds *appsv1.DaemonSet) *corev1.Pod {
	tmpl := ds.Spec.Template.DeepCopy()
	pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	pod.Namespace = ds.Namespace
	addDaemonTolerations(&pod.Spec)
	return pod
}

// fit says whether a daemon pod should be created on a node (shouldRun) and
// whether one already there may stay (shouldContinue): a new NoSchedule
// taint keeps new pods off but does not evict, while NoExecute does.
func fit(pod *corev1.Pod, node *corev1.Node, logger logr.Logger) (shouldRun, shouldContinue bool) {
	if pod.Spec.NodeName != "" && pod.Spec.NodeName != node.Name {
		return false, false
	}
	// A malformed selector matches nothing, as the scheduler treats it.
	if ok, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(node); err != nil || !ok {
		return false, false
	}
	if _, bad := corev1helpers.FindMatchingUntoleratedTaint(logger, node.Spec.Taints, pod.Spec.Tolerations,
		func(t *corev1.Taint) bool { return t.Effect == corev1.TaintEffectNoExecute }, enableTaintComparisons); bad {
		return false, false
	}
	if _, bad := corev1helpers.FindMatchingUntoleratedTaint(logger, node.Spec.Taints, pod.Spec.Tolerations,
		func(t *corev1.Taint) bool { return t.Effect == corev1.TaintEffectNoSchedule }, enableTaintComparisons); bad {
		return false, true
	}
	return true, true
}

// pinToNode replaces the required node affinity with one term selecting the
// node by name, as upstream does: the node already passed the template's own
// terms, and the scheduler then binds the pod there and nowhere else.
func pinToNode(spec *corev1.PodSpec, nodeName string) {
	term := corev1.NodeSelectorTerm{MatchFields: []corev1.NodeSelectorRequirement{{
		Key: metav1.ObjectNameField, Operator: corev1.NodeSelectorOpIn, Values: []string{nodeName},
	}}}
	if spec.Affinity == nil {
		spec.Affinity = &corev1.Affinity{}
	}
	if spec.Affinity.NodeAffinity == nil {
		spec.Affinity.NodeAffinity = &corev1.NodeAffinity{}
	}
	spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution = &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{term},
	}
}

// targetNode is the node a daemon pod belongs to: where it is bound, or,
// while unscheduled, the node its pinning affinity names.
func targetNode(pod *corev1.Pod) string {
	if pod.Spec.NodeName != "" {
		return pod.Spec.NodeName
	}
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, r := range term.MatchFields {
			if r.Key == metav1.ObjectNameField && r.Operator == corev1.NodeSelectorOpIn && len(r.Values) == 1 {
				return r.Values[0]
			}
		}
	}
	return ""
}

// templateHash stands in for the ControllerRevision name upstream puts in
// the controller-revision-hash label (Capstan serves no
// ControllerRevisions): equal templates give equal hashes, and the collision
// count lets a user force a new value as upstream allows.
func templateHash(ds *appsv1.DaemonSet) (string, error) {
	b, err := json.Marshal(ds.Spec.Template)
	if err != nil {
		return "", fmt.Errorf("hash template: %w", err)
	}
	h := fnv.New32a()
	h.Write(b)
	if ds.Status.CollisionCount != nil {
		fmt.Fprintf(h, "%d", *ds.Status.CollisionCount)
	}
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32())), nil
}
