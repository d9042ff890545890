package deployment

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/dump"
	"k8s.io/apimachinery/pkg/util/rand"
)

// Annotation and label names shared with kubectl, which reads them to
// list and undo rollouts.
const (
	revisionAnnotation        = "deployment.kubernetes.io/revision"
	desiredReplicasAnnotation = "deployment.kubernetes.io/desired-replicas"
	maxReplicasAnnotation     = "deployment.kubernetes.io/max-replicas"
	hashLabel                 = appsv1.DefaultDeploymentUniqueLabelKey
)

// podTemplateHash names a template. It hashes the same way Kubernetes
// does, so ReplicaSets created by another control plane keep their names
// and are found again. The collision count perturbs the hash when a
// foreign ReplicaSet already holds the name.
func podTemplateHash(t *corev1.PodTemplateSpec, collisionCount *int32) string {
	h := fnv.New32a()
	fmt.Fprintf(h, "%v", dump.ForHash(*t))
	if collisionCount != nil {
		b := make([]byte, 8)
		binary.LittleEndian.PutUint32(b, uint32(*collisionCount))
		h.Write(b)
	}
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32()))
}

// sameTemplate compares a ReplicaSet's template with a Deployment's,
// ignoring the hash label the controller added. This is what makes a
// rollback find the old ReplicaSet: kubectl copies its template back
// without that label.
func sameTemplate(a, b *corev1.PodTemplateSpec) bool {
	a, b = a.DeepCopy(), b.DeepCopy()
	delete(a.Labels, hashLabel)
	delete(b.Labels, hashLabel)
	if len(a.Labels) == 0 {
		a.Labels = nil
	}
	if len(b.Labels) == 0 {
		b.Labels = nil
	}
	return apiequality.Semantic.DeepEqual(a, b)
}

func revision(rs *appsv1.ReplicaSet) int64 {
	v, err := strconv.ParseInt(rs.Annotations[revisionAnnotation], 10, 64)
	if err != nil {
		return 0
	}
	return v
}

func replicasOf(rs *appsv1.ReplicaSet) int32 {
	if rs.Spec.Replicas == nil {
		return 1
	}
	return *rs.Spec.Replicas
}

// availableOf trusts the ReplicaSet's available count only up to its
// spec: right after a scale-down the status still counts pods being
// deleted, and counting them would let the rollout remove too many.
func availableOf(rs *appsv1.ReplicaSet) int32 {
	return min(rs.Status.AvailableReplicas, replicasOf(rs))
}

func byAge(rss []*appsv1.ReplicaSet) {
	sort.SliceStable(rss, func(i, j int) bool {
		a, b := rss[i], rss[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Name < b.Name
	})
}

// claimReplicaSets returns private copies of the ReplicaSets the
// Deployment controls, after adopting matching orphans and releasing
// owned ones that stopped matching its selector.
func (c *Controller) claimReplicaSets(ctx context.Context, d *appsv1.Deployment, sel labels.Selector, all []*appsv1.ReplicaSet) ([]*appsv1.ReplicaSet, error) {
	var owned []*appsv1.ReplicaSet
	var errs []error
	checked, canAdopt := false, false
	for _, rs := range all {
		ref := metav1.GetControllerOf(rs)
		matches := sel.Matches(labels.Set(rs.Labels))
		switch {
		case ref != nil && ref.UID == d.UID:
			if matches {
				owned = append(owned, rs.DeepCopy())
				continue
			}
			patch := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"$patch":"delete","uid":%q}],"uid":%q}}`, d.UID, rs.UID)
			if _, err := c.patchRS(ctx, rs, patch); err != nil {
				errs = append(errs, fmt.Errorf("release replicaset %s: %w", rs.Name, err))
			}
		case ref == nil && matches && rs.DeletionTimestamp == nil:
			if !checked {
				// A cached Deployment may be a deleted namesake;
				// adopting for a dead UID would orphan the set again.
				checked = true
				fresh, err := c.client.AppsV1().Deployments(d.Namespace).Get(ctx, d.Name, metav1.GetOptions{})
				canAdopt = err == nil && fresh.UID == d.UID && fresh.DeletionTimestamp == nil
			}
			if !canAdopt {
				continue
			}
			patch := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":%q,"kind":%q,"name":%q,"uid":%q,"controller":true,"blockOwnerDeletion":true}],"uid":%q}}`,
				kind().GroupVersion().String(), kind().Kind, d.Name, d.UID, rs.UID)
			applied, err := c.patchRS(ctx, rs, patch)
			if err != nil {
				errs = append(errs, fmt.Errorf("adopt replicaset %s: %w", rs.Name, err))
				continue
			}
			if !applied {
				continue
			}
			adopted := rs.DeepCopy()
			adopted.OwnerReferences = append(adopted.OwnerReferences, *metav1.NewControllerRef(d, kind()))
			owned = append(owned, adopted)
		}
	}
	return owned, errors.Join(errs...)
}

// patchRS treats "gone" and "changed owner meanwhile" as done: either
// way the set is not ours to touch.
func (c *Controller) patchRS(ctx context.Context, rs *appsv1.ReplicaSet, patch string) (bool, error) {
	_, err := c.client.AppsV1().ReplicaSets(rs.Namespace).Patch(ctx, rs.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) || apierrors.IsInvalid(err) {
		return false, nil
	}
	return err == nil, err
}
