package deployment

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// errHashCollision asks for a retry after the collision count moved the
// hash to a free name.
var errHashCollision = errors.New("deployment: replicaset name taken by another template")

// defaultRevisionHistoryLimit matches the apps/v1 default for clients that
// send none (the API server normally fills it in).
const defaultRevisionHistoryLimit = 10

// rollout is one sync of one Deployment: the ReplicaSets it owns split
// into the one running the current template and the old ones.
type rollout struct {
	c          *Controller
	d          *appsv1.Deployment
	all        []*appsv1.ReplicaSet
	newRS      *appsv1.ReplicaSet
	old        []*appsv1.ReplicaSet
	createdNew bool
}

func desired(d *appsv1.Deployment) int32 {
	if d.Spec.Replicas == nil {
		return 1
	}
	return *d.Spec.Replicas
}

// fenceposts resolves maxSurge (rounded up) and maxUnavailable (rounded
// down) against the replica count. Both zero would deadlock a rollout,
// so unavailability gets one.
func fenceposts(d *appsv1.Deployment) (surge, unavailable int32, err error) {
	ms, mu := intstr.FromString("25%"), intstr.FromString("25%")
	if ru := d.Spec.Strategy.RollingUpdate; ru != nil {
		if ru.MaxSurge != nil {
			ms = *ru.MaxSurge
		}
		if ru.MaxUnavailable != nil {
			mu = *ru.MaxUnavailable
		}
	}
	n := int(desired(d))
	s, err := intstr.GetScaledValueFromIntOrPercent(&ms, n, true)
	if err != nil {
		return 0, 0, fmt.Errorf("maxSurge: %w", err)
	}
	u, err := intstr.GetScaledValueFromIntOrPercent(&mu, n, false)
	if err != nil {
		return 0, 0, fmt.Errorf("maxUnavailable: %w", err)
	}
	if s == 0 && u == 0 {
		u = 1
	}
	return int32(max(s, 0)), int32(min(max(u, 0), n)), nil
}

func (r *rollout) run(ctx context.Context) error {
	r.split()
	if r.d.Spec.Paused {
		// Paused: no new ReplicaSet and no template change rolls out;
		// only a replica count change reaches the current one.
		if err := r.syncNew(ctx, false); err != nil {
			return err
		}
		if _, err := r.resize(ctx); err != nil {
			return err
		}
		if err := r.cleanup(ctx); err != nil {
			return err
		}
		return r.syncStatus(ctx)
	}
	if err := r.syncNew(ctx, true); err != nil {
		return err
	}
	var err error
	var scaled bool
	switch {
	case r.d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType:
		scaled, err = r.recreate(ctx)
	case r.resizing():
		// A replica count change mid-rollout is spread over the sets
		// first; the rollout continues from there on the next sync.
		scaled, err = r.resize(ctx)
	default:
		scaled, err = r.rollingUpdate(ctx)
	}
	if err != nil {
		return err
	}
	if !scaled {
		if err := r.cleanup(ctx); err != nil {
			return err
		}
	}
	return r.syncStatus(ctx)
}

// split picks the ReplicaSet whose template is the Deployment's; the
// oldest wins if several match, so the choice is stable across syncs.
func (r *rollout) split() {
	byAge(r.all)
	r.newRS, r.old = nil, nil
	for _, rs := range r.all {
		if r.newRS == nil && sameTemplate(&rs.Spec.Template, &r.d.Spec.Template) {
			r.newRS = rs
			continue
		}
		r.old = append(r.old, rs)
	}
}

// resizing reports a replica count change: an active set was last scaled
// for a different Deployment size.
func (r *rollout) resizing() bool {
	want := strconv.Itoa(int(desired(r.d)))
	for _, rs := range r.all {
		if v, ok := rs.Annotations[desiredReplicasAnnotation]; ok && replicasOf(rs) > 0 && v != want {
			return true
		}
	}
	return false
}

// resize applies a replica count change. With one active set it simply
// takes the new count. With several (mid-rollout) each set grows or
// shrinks in proportion to its share, so the rollout's progress is kept
// instead of being thrown onto one version.
func (r *rollout) resize(ctx context.Context) (bool, error) {
	// Every active set is rewritten with the new size annotation, even
	// if its count stays, or resizing would never report done.
	want := strconv.Itoa(int(desired(r.d)))
	stale := func(rs *appsv1.ReplicaSet) bool {
		v, ok := rs.Annotations[desiredReplicasAnnotation]
		return ok && v != want
	}
	if target := r.soleActive(); target != nil {
		if replicasOf(target) == desired(r.d) && !stale(target) {
			return false, nil
		}
		return true, r.scale(ctx, target, desired(r.d))
	}
	surge, _, err := fenceposts(r.d)
	if err != nil {
		return false, err
	}
	allowed := desired(r.d) + surge
	if r.d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType {
		allowed = desired(r.d)
	}
	toAdd := allowed - r.total()
	var active []*appsv1.ReplicaSet
	for _, rs := range r.all {
		if replicasOf(rs) > 0 {
			active = append(active, rs)
		}
	}
	if len(active) == 0 {
		return false, nil
	}
	// Largest first, so the leftover from rounding lands on the set
	// that carries most of the load; newer first on ties when growing,
	// older first when shrinking.
	sort.SliceStable(active, func(i, j int) bool {
		a, b := active[i], active[j]
		if replicasOf(a) != replicasOf(b) {
			return replicasOf(a) > replicasOf(b)
		}
		if toAdd > 0 {
			return b.CreationTimestamp.Before(&a.CreationTimestamp)
		}
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	})
	target := map[*appsv1.ReplicaSet]int32{}
	var added int32
	for _, rs := range active {
		target[rs] = replicasOf(rs)
		prevMax, err := strconv.Atoi(rs.Annotations[maxReplicasAnnotation])
		if err != nil || prevMax <= 0 {
			continue
		}
		share := int32(math.Round(float64(replicasOf(rs))*float64(allowed)/float64(prevMax))) - replicasOf(rs)
		if toAdd > 0 {
			share = min(share, toAdd-added)
		} else {
			share = max(share, toAdd-added)
		}
		if (toAdd > 0) != (share > 0) {
			continue
		}
		target[rs] += share
		added += share
	}
	if left := toAdd - added; left != 0 {
		target[active[0]] = max(0, target[active[0]]+left)
	}
	wrote := false
	for _, rs := range active {
		if target[rs] != replicasOf(rs) || stale(rs) {
			if err := r.scale(ctx, rs, target[rs]); err != nil {
				return wrote, err
			}
			wrote = true
		}
	}
	return wrote, nil
}

// soleActive is the set a paused Deployment's replica count applies to:
// the only one with pods, else the new one. With several active sets
// (paused mid-rollout) there is no single right answer, so none.
func (r *rollout) soleActive() *appsv1.ReplicaSet {
	var active []*appsv1.ReplicaSet
	for _, rs := range r.all {
		if replicasOf(rs) > 0 {
			active = append(active, rs)
		}
	}
	switch len(active) {
	case 0:
		return r.newRS
	case 1:
		return active[0]
	}
	return nil
}

func (r *rollout) activeOld() int32 {
	var n int32
	for _, rs := range r.old {
		n += replicasOf(rs)
	}
	return n
}

func (r *rollout) total() int32 {
	var n int32
	for _, rs := range r.all {
		n += replicasOf(rs)
	}
	return n
}

func (r *rollout) maxOldRevision() int64 {
	var m int64
	for _, rs := range r.old {
		m = max(m, revision(rs))
	}
	return m
}

// syncNew makes sure the new ReplicaSet exists (if create) and carries
// the highest revision. A rollback turns an old set into the new one; it
// then gets the next revision number, as kubectl expects.
func (r *rollout) syncNew(ctx context.Context, create bool) error {
	next := r.maxOldRevision() + 1
	if r.newRS == nil {
		if !create {
			return nil
		}
		if err := r.createNew(ctx, next); err != nil {
			return err
		}
	} else if revision(r.newRS) < next || r.newRS.Spec.MinReadySeconds != r.d.Spec.MinReadySeconds {
		rs := r.newRS.DeepCopy()
		if rs.Annotations == nil {
			rs.Annotations = map[string]string{}
		}
		if revision(rs) < next {
			rs.Annotations[revisionAnnotation] = strconv.FormatInt(next, 10)
		}
		rs.Spec.MinReadySeconds = r.d.Spec.MinReadySeconds
		updated, err := r.c.client.AppsV1().ReplicaSets(rs.Namespace).Update(ctx, rs, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update revision of %s: %w", rs.Name, err)
		}
		*r.newRS = *updated
	}
	// The Deployment carries its current revision for kubectl.
	rev := r.newRS.Annotations[revisionAnnotation]
	if r.d.Annotations[revisionAnnotation] != rev {
		d := r.d.DeepCopy()
		if d.Annotations == nil {
			d.Annotations = map[string]string{}
		}
		d.Annotations[revisionAnnotation] = rev
		updated, err := r.c.client.AppsV1().Deployments(d.Namespace).Update(ctx, d, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("annotate deployment revision: %w", err)
		}
		// Keep the status we read: the write above does not change it
		// and syncStatus compares against it.
		updated.Status = r.d.Status
		r.d = updated
	}
	return nil
}

// createNew creates the ReplicaSet at zero replicas; the strategy scales
// it in the same sync. Its name derives from the template, so a retry
// after a crash finds the set instead of making a second one.
func (r *rollout) createNew(ctx context.Context, rev int64) error {
	d := r.d
	hash := podTemplateHash(&d.Spec.Template, d.Status.CollisionCount)
	tmpl := d.Spec.Template.DeepCopy()
	if tmpl.Labels == nil {
		tmpl.Labels = map[string]string{}
	}
	tmpl.Labels[hashLabel] = hash
	sel := d.Spec.Selector.DeepCopy()
	if sel.MatchLabels == nil {
		sel.MatchLabels = map[string]string{}
	}
	sel.MatchLabels[hashLabel] = hash
	rsLabels := map[string]string{}
	for k, v := range tmpl.Labels {
		rsLabels[k] = v
	}
	zero := int32(0)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Name:            d.Name + "-" + hash,
			Namespace:       d.Namespace,
			Labels:          rsLabels,
			Annotations:     map[string]string{revisionAnnotation: strconv.FormatInt(rev, 10)},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, kind())},
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas:        &zero,
			MinReadySeconds: d.Spec.MinReadySeconds,
			Selector:        sel,
			Template:        *tmpl,
		},
	}
	created, err := r.c.client.AppsV1().ReplicaSets(d.Namespace).Create(ctx, rs, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		existing, gerr := r.c.client.AppsV1().ReplicaSets(d.Namespace).Get(ctx, rs.Name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		if ref := metav1.GetControllerOf(existing); ref != nil && ref.UID == d.UID && sameTemplate(&existing.Spec.Template, &d.Spec.Template) {
			// Ours from an earlier sync the informer has not shown yet.
			r.newRS = existing
			r.all = append(r.all, existing)
			return nil
		}
		st := d.Status.DeepCopy()
		n := int32(0)
		if st.CollisionCount != nil {
			n = *st.CollisionCount
		}
		n++
		st.CollisionCount = &n
		d = d.DeepCopy()
		d.Status = *st
		if _, err := r.c.client.AppsV1().Deployments(d.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("bump collision count: %w", err)
		}
		return errHashCollision
	}
	if err != nil {
		return fmt.Errorf("create replicaset %s: %w", rs.Name, err)
	}
	r.newRS = created
	r.all = append(r.all, created)
	r.createdNew = true
	return nil
}

// scale sets a ReplicaSet's replicas and records in annotations the
// Deployment size it was scaled for.
func (r *rollout) scale(ctx context.Context, rs *appsv1.ReplicaSet, n int32) error {
	surge, _, err := fenceposts(r.d)
	if err != nil {
		return err
	}
	cp := rs.DeepCopy()
	cp.Spec.Replicas = &n
	if cp.Annotations == nil {
		cp.Annotations = map[string]string{}
	}
	cp.Annotations[desiredReplicasAnnotation] = strconv.Itoa(int(desired(r.d)))
	cp.Annotations[maxReplicasAnnotation] = strconv.Itoa(int(desired(r.d) + surge))
	updated, err := r.c.client.AppsV1().ReplicaSets(cp.Namespace).Update(ctx, cp, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("scale %s to %d: %w", rs.Name, n, err)
	}
	*rs = *updated
	return nil
}

// rollingUpdate takes one step: grow the new set within maxSurge, else
// shrink old sets within maxUnavailable. It reports whether it wrote.
func (r *rollout) rollingUpdate(ctx context.Context) (bool, error) {
	surge, unavail, err := fenceposts(r.d)
	if err != nil {
		return false, err
	}
	want := desired(r.d)
	cur := replicasOf(r.newRS)
	target := cur
	switch {
	case cur > want:
		target = want
	case r.activeOld() == 0:
		target = want
	default:
		if room := want + surge - r.total(); room > 0 {
			target = cur + min(room, want-cur)
		}
	}
	if target != cur {
		return true, r.scale(ctx, r.newRS, target)
	}
	return r.scaleDownOld(ctx, want, unavail)
}

// scaleDownOld shrinks old sets while keeping at least want-unavail
// available pods. Unhealthy old pods go first: they count against the
// budget without serving, and leaving them could stall the rollout.
func (r *rollout) scaleDownOld(ctx context.Context, want, unavail int32) (bool, error) {
	if r.activeOld() == 0 {
		return false, nil
	}
	minAvailable := want - unavail
	newUnavailable := replicasOf(r.newRS) - availableOf(r.newRS)
	budget := r.total() - minAvailable - newUnavailable
	if budget <= 0 {
		return false, nil
	}
	old := append([]*appsv1.ReplicaSet(nil), r.old...)
	byAge(old)
	wrote := false
	var cleaned int32
	for _, rs := range old {
		if cleaned >= budget {
			break
		}
		unhealthy := replicasOf(rs) - availableOf(rs)
		if replicasOf(rs) == 0 || unhealthy <= 0 {
			continue
		}
		n := min(budget-cleaned, unhealthy)
		if err := r.scale(ctx, rs, replicasOf(rs)-n); err != nil {
			return wrote, err
		}
		cleaned += n
		wrote = true
	}
	var availableNow int32
	for _, rs := range r.all {
		availableNow += availableOf(rs)
	}
	if availableNow <= minAvailable {
		return wrote, nil
	}
	left := availableNow - minAvailable
	for _, rs := range old {
		if left <= 0 {
			break
		}
		if replicasOf(rs) == 0 {
			continue
		}
		n := min(replicasOf(rs), left)
		if err := r.scale(ctx, rs, replicasOf(rs)-n); err != nil {
			return wrote, err
		}
		left -= n
		wrote = true
	}
	return wrote, nil
}

// recreate empties every old set, waits until their pods are gone, and
// only then grows the new one, so two versions never run together.
func (r *rollout) recreate(ctx context.Context) (bool, error) {
	wrote := false
	for _, rs := range r.old {
		if replicasOf(rs) != 0 {
			if err := r.scale(ctx, rs, 0); err != nil {
				return wrote, err
			}
			wrote = true
		}
	}
	if wrote {
		return true, nil
	}
	running, err := r.oldPodsRunning()
	if err != nil || running {
		return false, err
	}
	if replicasOf(r.newRS) != desired(r.d) {
		return true, r.scale(ctx, r.newRS, desired(r.d))
	}
	return false, nil
}

// oldPodsRunning counts terminating pods too: they may still serve.
func (r *rollout) oldPodsRunning() (bool, error) {
	uids := map[types.UID]bool{}
	for _, rs := range r.old {
		if rs.Status.Replicas > 0 {
			return true, nil
		}
		uids[rs.UID] = true
	}
	pods, err := r.c.podLister.Pods(r.d.Namespace).List(labels.Everything())
	if err != nil {
		return false, err
	}
	for _, p := range pods {
		ref := metav1.GetControllerOf(p)
		if ref == nil || !uids[ref.UID] {
			continue
		}
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return true, nil
		}
	}
	return false, nil
}

// cleanup deletes the oldest fully scaled-down sets beyond
// revisionHistoryLimit. Sets still draining or not yet observed by their
// controller are kept: their pods may still exist.
func (r *rollout) cleanup(ctx context.Context) error {
	limit := int32(defaultRevisionHistoryLimit)
	if r.d.Spec.RevisionHistoryLimit != nil {
		limit = *r.d.Spec.RevisionHistoryLimit
	}
	var dead []*appsv1.ReplicaSet
	for _, rs := range r.old {
		if replicasOf(rs) == 0 && rs.Status.Replicas == 0 && rs.Status.ObservedGeneration >= rs.Generation && rs.DeletionTimestamp == nil {
			dead = append(dead, rs)
		}
	}
	excess := len(dead) - int(limit)
	if excess <= 0 {
		return nil
	}
	sort.SliceStable(dead, func(i, j int) bool { return revision(dead[i]) < revision(dead[j]) })
	for _, rs := range dead[:excess] {
		uid := rs.UID
		err := r.c.client.AppsV1().ReplicaSets(rs.Namespace).Delete(ctx, rs.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete old replicaset %s: %w", rs.Name, err)
		}
	}
	return nil
}
