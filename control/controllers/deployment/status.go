package deployment

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition reasons, as kubectl rollout status and users know them.
const (
	reasonNewRSCreated     = "NewReplicaSetCreated"
	reasonFoundNewRS       = "FoundNewReplicaSet"
	reasonRSUpdated        = "ReplicaSetUpdated"
	reasonNewRSAvailable   = "NewReplicaSetAvailable"
	reasonTimedOut         = "ProgressDeadlineExceeded"
	reasonPaused           = "DeploymentPaused"
	reasonResumed          = "DeploymentResumed"
	reasonMinAvailable     = "MinimumReplicasAvailable"
	reasonMinUnavailable   = "MinimumReplicasUnavailable"
	progressingType        = appsv1.DeploymentProgressing
	availableType          = appsv1.DeploymentAvailable
	noProgressDeadlineSecs = math.MaxInt32
)

func hasDeadline(d *appsv1.Deployment) bool {
	return d.Spec.ProgressDeadlineSeconds != nil && *d.Spec.ProgressDeadlineSeconds != noProgressDeadlineSecs
}

func condition(st *appsv1.DeploymentStatus, t appsv1.DeploymentConditionType) *appsv1.DeploymentCondition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == t {
			return &st.Conditions[i]
		}
	}
	return nil
}

// setCondition replaces the condition of c's type. An unchanged status and
// reason is left alone, unless refresh asks to move lastUpdateTime (the
// progress deadline counts from it); the transition time only moves when
// the status does.
func setCondition(st *appsv1.DeploymentStatus, c appsv1.DeploymentCondition, refresh bool) {
	cur := condition(st, c.Type)
	if cur != nil && cur.Status == c.Status && cur.Reason == c.Reason && !refresh {
		return
	}
	if cur != nil && cur.Status == c.Status {
		c.LastTransitionTime = cur.LastTransitionTime
	}
	var keep []appsv1.DeploymentCondition
	for _, x := range st.Conditions {
		if x.Type != c.Type {
			keep = append(keep, x)
		}
	}
	st.Conditions = append(keep, c)
}

func newCondition(t appsv1.DeploymentConditionType, s corev1.ConditionStatus, reason, msg string, now time.Time) appsv1.DeploymentCondition {
	ts := metav1.NewTime(now)
	return appsv1.DeploymentCondition{Type: t, Status: s, Reason: reason, Message: msg, LastUpdateTime: ts, LastTransitionTime: ts}
}

// complete: every desired pod runs the new template and is available,
// and nothing old is left.
func complete(d *appsv1.Deployment, st *appsv1.DeploymentStatus) bool {
	n := desired(d)
	return st.UpdatedReplicas == n && st.Replicas == n && st.AvailableReplicas == n && st.ObservedGeneration >= d.Generation
}

// progressed compares with the status last written: more new pods, fewer
// old ones, or more ready or available pods all count as progress.
func progressed(old, cur *appsv1.DeploymentStatus) bool {
	return cur.UpdatedReplicas > old.UpdatedReplicas ||
		cur.Replicas-cur.UpdatedReplicas < old.Replicas-old.UpdatedReplicas ||
		cur.ReadyReplicas > old.ReadyReplicas ||
		cur.AvailableReplicas > old.AvailableReplicas
}

// syncStatus derives the Deployment's status from its ReplicaSets and
// writes it if it changed.
func (r *rollout) syncStatus(ctx context.Context) error {
	d := r.d
	now := r.c.clock.Now()
	st := d.Status.DeepCopy()
	st.ObservedGeneration = d.Generation
	st.Replicas, st.UpdatedReplicas, st.ReadyReplicas, st.AvailableReplicas = 0, 0, 0, 0
	for _, rs := range r.all {
		st.Replicas += rs.Status.Replicas
		st.ReadyReplicas += rs.Status.ReadyReplicas
		st.AvailableReplicas += rs.Status.AvailableReplicas
	}
	if r.newRS != nil {
		st.UpdatedReplicas = r.newRS.Status.Replicas
	}
	st.UnavailableReplicas = max(0, r.total()-st.AvailableReplicas)

	_, unavail, err := fenceposts(d)
	if err != nil {
		return err
	}
	if st.AvailableReplicas >= desired(d)-unavail {
		setCondition(st, newCondition(availableType, corev1.ConditionTrue, reasonMinAvailable, "Deployment has minimum availability.", now), false)
	} else {
		setCondition(st, newCondition(availableType, corev1.ConditionFalse, reasonMinUnavailable, "Deployment does not have minimum availability.", now), false)
	}

	var recheck time.Duration
	if hasDeadline(d) {
		recheck = r.progressing(st, now)
	}

	if recheck > 0 {
		// Nothing else would wake us when the deadline passes.
		r.c.queue.AddAfter(d.Namespace+"/"+d.Name, recheck)
	}
	if apiequality.Semantic.DeepEqual(*st, d.Status) {
		return nil
	}
	d = d.DeepCopy()
	d.Status = *st
	_, err = r.c.client.AppsV1().Deployments(d.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("update deployment status: %w", err)
	}
	return nil
}

// progressing sets the Progressing condition and returns when the
// deadline should be checked again (zero: no need).
func (r *rollout) progressing(st *appsv1.DeploymentStatus, now time.Time) time.Duration {
	d := r.d
	cur := condition(st, progressingType)
	if d.Spec.Paused {
		if cur == nil || cur.Reason != reasonPaused {
			setCondition(st, newCondition(progressingType, corev1.ConditionUnknown, reasonPaused, "Deployment is paused", now), false)
		}
		return 0
	}
	if cur != nil && cur.Reason == reasonPaused {
		// The deadline starts over on resume, not from before the pause.
		setCondition(st, newCondition(progressingType, corev1.ConditionUnknown, reasonResumed, "Deployment is resumed", now), false)
	}
	if r.newRS == nil {
		return 0
	}
	name := r.newRS.Name
	switch {
	case r.createdNew:
		setCondition(st, newCondition(progressingType, corev1.ConditionTrue, reasonNewRSCreated, fmt.Sprintf("Created new replica set %q", name), now), false)
	case cur == nil || !mentions(cur.Message, name):
		// First look at this set (a rollback makes an old set new):
		// a verdict about another set must not carry over, and the
		// deadline starts now.
		setCondition(st, newCondition(progressingType, corev1.ConditionTrue, reasonFoundNewRS, fmt.Sprintf("Found new replica set %q", name), now), true)
	}
	cur = condition(st, progressingType)
	switch {
	case complete(d, st):
		setCondition(st, newCondition(progressingType, corev1.ConditionTrue, reasonNewRSAvailable, fmt.Sprintf("ReplicaSet %q has successfully progressed.", name), now), false)
		return 0
	case progressed(&d.Status, st):
		setCondition(st, newCondition(progressingType, corev1.ConditionTrue, reasonRSUpdated, fmt.Sprintf("ReplicaSet %q is progressing.", name), now), true)
		return time.Duration(*d.Spec.ProgressDeadlineSeconds)*time.Second + time.Second
	case cur.Reason == reasonTimedOut:
		return 0
	case cur.Reason == reasonNewRSAvailable:
		// Losing pods after a finished rollout is not a stalled
		// rollout; Available reports it.
		return 0
	}
	deadline := cur.LastUpdateTime.Add(time.Duration(*d.Spec.ProgressDeadlineSeconds) * time.Second)
	if now.After(deadline) {
		setCondition(st, newCondition(progressingType, corev1.ConditionFalse, reasonTimedOut, fmt.Sprintf("ReplicaSet %q has timed out progressing.", name), now), false)
		return 0
	}
	return deadline.Sub(now) + time.Second
}

// mentions tells whether a condition message is about the named set.
func mentions(msg, name string) bool {
	return strings.Contains(msg, strconv.Quote(name))
}
