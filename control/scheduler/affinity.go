package scheduler

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
)

// nsLabels returns a namespace's labels, for namespaceSelector in terms.
type nsLabels func(namespace string) labels.Set

// term is a compiled PodAffinityTerm.
type term struct {
	selector    labels.Selector
	namespaces  sets.Set[string]
	nsSelector  labels.Selector // nil when the term has none
	topologyKey string
	weight      int64
}

func compileTerm(owner *corev1.Pod, t *corev1.PodAffinityTerm, weight int32) (term, error) {
	out := term{namespaces: sets.New(t.Namespaces...), topologyKey: t.TopologyKey, weight: int64(weight)}
	if len(t.Namespaces) == 0 && t.NamespaceSelector == nil {
		out.namespaces.Insert(owner.Namespace)
	}
	var err error
	if t.NamespaceSelector != nil {
		if out.nsSelector, err = metav1.LabelSelectorAsSelector(t.NamespaceSelector); err != nil {
			return term{}, fmt.Errorf("namespace selector: %w", err)
		}
	}
	if out.selector, err = metav1.LabelSelectorAsSelector(t.LabelSelector); err != nil {
		return term{}, fmt.Errorf("label selector: %w", err)
	}
	return out, nil
}

func (t *term) matches(pod *corev1.Pod, ns nsLabels) bool {
	if !t.namespaces.Has(pod.Namespace) && (t.nsSelector == nil || !t.nsSelector.Matches(ns(pod.Namespace))) {
		return false
	}
	return t.selector.Matches(labels.Set(pod.Labels))
}

// podTerms are a pod's compiled affinity and anti-affinity terms.
type podTerms struct {
	affinity, anti                   []term // required
	preferredAffinity, preferredAnti []term
}

func compilePodTerms(pod *corev1.Pod) (podTerms, error) {
	var out podTerms
	a := pod.Spec.Affinity
	if a == nil {
		return out, nil
	}
	add := func(dst *[]term, t *corev1.PodAffinityTerm, w int32) error {
		c, err := compileTerm(pod, t, w)
		if err != nil {
			return err
		}
		*dst = append(*dst, c)
		return nil
	}
	if pa := a.PodAffinity; pa != nil {
		for i := range pa.RequiredDuringSchedulingIgnoredDuringExecution {
			if err := add(&out.affinity, &pa.RequiredDuringSchedulingIgnoredDuringExecution[i], 1); err != nil {
				return out, err
			}
		}
		for i := range pa.PreferredDuringSchedulingIgnoredDuringExecution {
			w := &pa.PreferredDuringSchedulingIgnoredDuringExecution[i]
			if err := add(&out.preferredAffinity, &w.PodAffinityTerm, w.Weight); err != nil {
				return out, err
			}
		}
	}
	if pa := a.PodAntiAffinity; pa != nil {
		for i := range pa.RequiredDuringSchedulingIgnoredDuringExecution {
			if err := add(&out.anti, &pa.RequiredDuringSchedulingIgnoredDuringExecution[i], 1); err != nil {
				return out, err
			}
		}
		for i := range pa.PreferredDuringSchedulingIgnoredDuringExecution {
			w := &pa.PreferredDuringSchedulingIgnoredDuringExecution[i]
			if err := add(&out.preferredAnti, &w.PodAffinityTerm, w.Weight); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

type topologyPair struct{ key, value string }

// affinityState is computed once per pod from every pod in the cache, so
// that per-node checks are map lookups (upstream's PreFilter).
type affinityState struct {
	affinity, anti []term
	// affinityCounts[i][v] counts pods matching affinity[i] in the domain
	// where the term's topology label is v; antiCounts likewise.
	affinityCounts, antiCounts []map[string]int
	// selfMatch is true when the pod matches all its own affinity terms,
	// which lets the first pod of a group go anywhere.
	selfMatch bool
	// existingAnti holds domains whose pods' required anti-affinity rejects
	// this pod.
	existingAnti map[topologyPair]struct{}
	// score sums preferred (anti-)affinity weights per domain.
	score map[topologyPair]int64
}

// newAffinityState returns nil when no pod affinity rule can matter.
func newAffinityState(pod *corev1.Pod, nodes []*nodeInfo, ns nsLabels) (*affinityState, error) {
	own, err := compilePodTerms(pod)
	if err != nil {
		return nil, fmt.Errorf("pod affinity: %w", err)
	}
	withTerms := hasPodAffinityTerms(pod)
	others := false
	for _, n := range nodes {
		if n.withAffinity > 0 {
			others = true
			break
		}
	}
	if !withTerms && !others {
		return nil, nil
	}
	s := &affinityState{
		affinity: own.affinity, anti: own.anti,
		affinityCounts: make([]map[string]int, len(own.affinity)),
		antiCounts:     make([]map[string]int, len(own.anti)),
		selfMatch:      true,
		existingAnti:   map[topologyPair]struct{}{},
		score:          map[topologyPair]int64{},
	}
	for i := range s.affinityCounts {
		s.affinityCounts[i] = map[string]int{}
		if !s.affinity[i].matches(pod, ns) {
			s.selfMatch = false
		}
	}
	for i := range s.antiCounts {
		s.antiCounts[i] = map[string]int{}
	}
	for _, n := range nodes {
		if !withTerms && n.withAffinity == 0 {
			continue
		}
		nl := n.node.Labels
		for _, other := range n.pods {
			op := other.pod
			if op.UID == pod.UID {
				continue
			}
			count := func(ts []term, counts []map[string]int) {
				for i := range ts {
					if v, ok := nl[ts[i].topologyKey]; ok && ts[i].matches(op, ns) {
						counts[i][v]++
					}
				}
			}
			count(own.affinity, s.affinityCounts)
			count(own.anti, s.antiCounts)
			s.addScore(own.preferredAffinity, op, nl, ns, 1)
			s.addScore(own.preferredAnti, op, nl, ns, -1)
			if !hasPodAffinityTerms(op) {
				continue
			}
			// Terms of pods already placed apply to this pod too (symmetry).
			theirs, err := compilePodTerms(op)
			if err != nil {
				continue // an existing pod's bad term cannot be our failure
			}
			for i := range theirs.anti {
				t := &theirs.anti[i]
				if v, ok := nl[t.topologyKey]; ok && t.matches(pod, ns) {
					s.existingAnti[topologyPair{t.topologyKey, v}] = struct{}{}
				}
			}
			s.addScore(theirs.preferredAffinity, pod, nl, ns, 1)
			s.addScore(theirs.preferredAnti, pod, nl, ns, -1)
		}
	}
	return s, nil
}

// addScore adds sign*weight to the domain of each term whose selector
// matches pod, in the topology of nodeLabels.
func (s *affinityState) addScore(ts []term, pod *corev1.Pod, nodeLabels map[string]string, ns nsLabels, sign int64) {
	for i := range ts {
		if v, ok := nodeLabels[ts[i].topologyKey]; ok && ts[i].matches(pod, ns) {
			s.score[topologyPair{ts[i].topologyKey, v}] += sign * ts[i].weight
		}
	}
}

func (s *affinityState) satisfiesAffinity(nodeLabels map[string]string) bool {
	if len(s.affinity) == 0 {
		return true
	}
	ok := true
	any := false
	for i, t := range s.affinity {
		if len(s.affinityCounts[i]) > 0 {
			any = true
		}
		v, has := nodeLabels[t.topologyKey]
		if !has || s.affinityCounts[i][v] == 0 {
			ok = false
		}
	}
	// No pod anywhere matches: a pod that matches its own terms may start
	// the group, or a ReplicaSet with self-affinity could never begin.
	return ok || (!any && s.selfMatch)
}

func (s *affinityState) nodeScore(nodeLabels map[string]string) int64 {
	var sum int64
	for p, w := range s.score {
		if nodeLabels[p.key] == p.value {
			if _, ok := nodeLabels[p.key]; ok {
				sum += w
			}
		}
	}
	return sum
}
