package bootstrap

import (
	"context"
	"fmt"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	rbacapply "k8s.io/client-go/applyconfigurations/rbac/v1"
	"k8s.io/client-go/kubernetes"
)

// DataplaneRole is the ClusterRole every node's dataplane runs with (bound
// to the system:nodes group: the agent's dataplane uses the kubelet's
// credentials).
const DataplaneRole = "capstan:dataplane"

// fieldManager owns what the server applies.
const fieldManager = "capstan-server"

// binding says: subjects (groups) get clusterRole.
type binding struct {
	name, clusterRole string
	groups            []string
}

// bindings are kubeadm's for TLS bootstrapping, under Capstan's names: join
// token holders may create CSRs, and the control plane approves theirs and
// nodes' renewals.
func bindings() []binding {
	return []binding{
		{"capstan:kubelet-bootstrap", "system:node-bootstrapper", []string{NodeGroup}},
		{"capstan:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", []string{NodeGroup}},
		{"capstan:node-autoapprove-certificate-rotation", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", []string{"system:nodes"}},
		{DataplaneRole, DataplaneRole, []string{"system:nodes"}},
	}
}

// dataplaneRules is what the dataplane reads to program Services, routes and
// NetworkPolicy, and the events it reports.
func dataplaneRules() []*rbacapply.PolicyRuleApplyConfiguration {
	read := []string{"get", "list", "watch"}
	return []*rbacapply.PolicyRuleApplyConfiguration{
		rbacapply.PolicyRule().WithAPIGroups("").WithResources("services", "nodes", "pods", "namespaces").WithVerbs(read...),
		rbacapply.PolicyRule().WithAPIGroups("discovery.k8s.io").WithResources("endpointslices").WithVerbs(read...),
		rbacapply.PolicyRule().WithAPIGroups("networking.k8s.io").WithResources("networkpolicies").WithVerbs(read...),
		rbacapply.PolicyRule().WithAPIGroups("", "events.k8s.io").WithResources("events").WithVerbs("create", "patch", "update"),
	}
}

// EnsureRBAC applies the roles and bindings; it is safe on every start.
func EnsureRBAC(ctx context.Context, cs kubernetes.Interface) error {
	opts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	role := rbacapply.ClusterRole(DataplaneRole).WithRules(dataplaneRules()...)
	if _, err := cs.RbacV1().ClusterRoles().Apply(ctx, role, opts); err != nil {
		return fmt.Errorf("clusterrole %s: %w", DataplaneRole, err)
	}
	for _, b := range bindings() {
		crb := rbacapply.ClusterRoleBinding(b.name).
			WithRoleRef(rbacapply.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("ClusterRole").WithName(b.clusterRole))
		for _, g := range b.groups {
			crb.WithSubjects(rbacapply.Subject().WithAPIGroup(rbacv1.GroupName).WithKind(rbacv1.GroupKind).WithName(g))
		}
		if _, err := cs.RbacV1().ClusterRoleBindings().Apply(ctx, crb, opts); err != nil {
			return fmt.Errorf("clusterrolebinding %s: %w", b.name, err)
		}
	}
	return nil
}
