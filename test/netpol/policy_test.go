//go:build netpol

package netpol_test

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// action is one change a case makes: to the cluster (do) and to the model
// the expectations are checked against (model).
type action interface {
	String() string
	model(m *model)
	do(ctx context.Context, s *suite) error
}

// Policies are written against the model: peers may need its pod IPs, its
// pod CIDR or its real namespace names.
type (
	policyOpt func(m *model, spec *networkingv1.NetworkPolicySpec)
	peerFn    func(m *model) networkingv1.NetworkPolicyPeer
)

// applyPolicy creates the policy, or replaces the one of that name.
type applyPolicy struct {
	ns, name string
	build    func(m *model) *networkingv1.NetworkPolicy
}

// policy is the NetworkPolicy ns/name selecting the pods podSelector picks.
func policy(ns, name string, podSelector *metav1.LabelSelector, opts ...policyOpt) action {
	return applyPolicy{ns, name, func(m *model) *networkingv1.NetworkPolicy {
		p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		p.Spec.PodSelector = *podSelector
		for _, o := range opts {
			o(m, &p.Spec)
		}
		return p
	}}
}

func (a applyPolicy) String() string { return fmt.Sprintf("apply policy %s/%s", a.ns, a.name) }

func (a applyPolicy) model(m *model) { m.policies[a.ns+"/"+a.name] = a.build(m) }

func (a applyPolicy) do(ctx context.Context, s *suite) error {
	p := a.build(s.m)
	p.Namespace = s.m.real[a.ns]
	api := s.c.CS.NetworkingV1().NetworkPolicies(p.Namespace)
	old, err := api.Get(ctx, p.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, p, metav1.CreateOptions{})
	case err == nil:
		p.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, p, metav1.UpdateOptions{})
	}
	if err != nil {
		return err
	}
	a.model(s.m)
	return nil
}

// deletePolicy deletes the policy ns/name.
type deletePolicy struct{ ns, name string }

func (a deletePolicy) String() string { return fmt.Sprintf("delete policy %s/%s", a.ns, a.name) }
func (a deletePolicy) model(m *model) { delete(m.policies, a.ns+"/"+a.name) }
func (a deletePolicy) do(ctx context.Context, s *suite) error {
	if err := s.c.CS.NetworkingV1().NetworkPolicies(s.m.real[a.ns]).Delete(ctx, a.name, metav1.DeleteOptions{}); err != nil {
		return err
	}
	a.model(s.m)
	return nil
}

// labelPod sets a label on a model pod, or removes it when value is "".
type labelPod struct {
	pod        podID
	key, value string
}

func (a labelPod) String() string { return fmt.Sprintf("label pod %s %s=%q", a.pod, a.key, a.value) }
func (a labelPod) model(m *model) { setLabel(m.podLabels[a.pod], a.key, a.value) }
func (a labelPod) do(ctx context.Context, s *suite) error {
	_, err := s.c.CS.CoreV1().Pods(s.m.real[a.pod.ns]).Patch(ctx, a.pod.name, types.MergePatchType,
		labelPatch(map[string]string{a.key: a.value}), metav1.PatchOptions{})
	if err == nil {
		a.model(s.m)
	}
	return err
}

// labelNS sets a label on a model namespace, or removes it when value is "".
type labelNS struct{ ns, key, value string }

func (a labelNS) String() string {
	return fmt.Sprintf("label namespace %s %s=%q", a.ns, a.key, a.value)
}
func (a labelNS) model(m *model) { setLabel(m.nsLabels[a.ns], a.key, a.value) }
func (a labelNS) do(ctx context.Context, s *suite) error {
	_, err := s.c.CS.CoreV1().Namespaces().Patch(ctx, s.m.real[a.ns], types.MergePatchType,
		labelPatch(map[string]string{a.key: a.value}), metav1.PatchOptions{})
	if err == nil {
		a.model(s.m)
	}
	return err
}

func setLabel(labels map[string]string, key, value string) {
	if value == "" {
		delete(labels, key)
	} else {
		labels[key] = value
	}
}

// labelPatch is a merge patch setting labels; an empty value removes one.
func labelPatch(labels map[string]string) []byte {
	l := map[string]any{}
	for k, v := range labels {
		if v == "" {
			l[k] = nil
		} else {
			l[k] = v
		}
	}
	data, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": l}})
	return data
}

// Selectors.

// sel matches labels k1=v1, k2=v2, ...; sel() matches everything.
func sel(kv ...string) *metav1.LabelSelector {
	set := labels.Set{}
	for i := 0; i+1 < len(kv); i += 2 {
		set[kv[i]] = kv[i+1]
	}
	return metav1.SetAsLabelSelector(set)
}

// selExpr is a selector with one expression.
func selExpr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

// Policy parts.

// policyTypes sets spec.policyTypes; without it the API's default applies.
func policyTypes(ts ...networkingv1.PolicyType) policyOpt {
	return func(m *model, spec *networkingv1.NetworkPolicySpec) { spec.PolicyTypes = ts }
}

var (
	ingressOnly      = policyTypes(networkingv1.PolicyTypeIngress)
	egressOnly       = policyTypes(networkingv1.PolicyTypeEgress)
	ingressAndEgress = policyTypes(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)
)

// allowFrom adds an ingress rule: from the peers (none: from anywhere), on
// the ports (none: every port).
func allowFrom(peers []peerFn, ports ...networkingv1.NetworkPolicyPort) policyOpt {
	return func(m *model, spec *networkingv1.NetworkPolicySpec) {
		rule := networkingv1.NetworkPolicyIngressRule{Ports: ports}
		for _, p := range peers {
			rule.From = append(rule.From, p(m))
		}
		spec.Ingress = append(spec.Ingress, rule)
	}
}

// allowTo adds an egress rule: to the peers (none: anywhere), on the ports
// (none: every port).
func allowTo(peers []peerFn, ports ...networkingv1.NetworkPolicyPort) policyOpt {
	return func(m *model, spec *networkingv1.NetworkPolicySpec) {
		rule := networkingv1.NetworkPolicyEgressRule{Ports: ports}
		for _, p := range peers {
			rule.To = append(rule.To, p(m))
		}
		spec.Egress = append(spec.Egress, rule)
	}
}

func peers(ps ...peerFn) []peerFn { return ps }

// podsWith is a peer of the pods podSelector picks in the policy's namespace.
func podsWith(podSelector *metav1.LabelSelector) peerFn {
	return func(*model) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{PodSelector: podSelector}
	}
}

// nsWith is a peer of every pod in the namespaces nsSelector picks.
func nsWith(nsSelector *metav1.LabelSelector) peerFn {
	return func(*model) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: nsSelector}
	}
}

// nsAndPods is one peer with both selectors: the pods podSelector picks in
// the namespaces nsSelector picks.
func nsAndPods(nsSelector, podSelector *metav1.LabelSelector) peerFn {
	return func(*model) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: nsSelector, PodSelector: podSelector}
	}
}

// nsNamed is a peer of every pod in the namespace whose base name is ns,
// picked by the label the API server sets.
func nsNamed(ns string) peerFn {
	return func(m *model) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(metadataNameLabel, m.real[ns])}
	}
}

// cidrFn gives a CIDR once the model knows its addresses.
type cidrFn func(m *model) string

// podCIDR is a prefix holding every pod IP of the cluster.
func podCIDR(m *model) string { return m.podCIDR }

// podIP32 is the /32 of one model pod's IP.
func podIP32(ns, name string) cidrFn {
	return func(m *model) string { return m.podIP[podID{ns, name}] + "/32" }
}

// ipBlock is a peer of the addresses in cidr but not in except.
func ipBlock(cidr cidrFn, except ...cidrFn) peerFn {
	return func(m *model) networkingv1.NetworkPolicyPeer {
		b := &networkingv1.IPBlock{CIDR: cidr(m)}
		for _, e := range except {
			b.Except = append(b.Except, e(m))
		}
		return networkingv1.NetworkPolicyPeer{IPBlock: b}
	}
}

// port is a port by number; a protocol of "" leaves it to the default (TCP).
func port(proto corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: protoPtr(proto), Port: ptr.To(intstr.FromInt32(n))}
}

// portRange is the ports from..to.
func portRange(proto corev1.Protocol, from, to int32) networkingv1.NetworkPolicyPort {
	p := port(proto, from)
	p.EndPort = ptr.To(to)
	return p
}

// namedPort is a container port name, resolved against the destination pod.
func namedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: protoPtr(proto), Port: ptr.To(intstr.FromString(name))}
}

func protoPtr(p corev1.Protocol) *corev1.Protocol {
	if p == "" {
		return nil
	}
	return &p
}
