// Package csrapprover approves the serving certificates kubelets ask for
// (signer kubernetes.io/kubelet-serving), which kube-controller-manager
// leaves to the cluster's operator. A request is approved when a node asks
// for itself, in the form the kubelet uses, and names only the addresses and
// host names its Node reports; anything else is left pending for a human.
// With these certificates the API server verifies kubelets, so `kubectl
// logs/exec/attach/port-forward` need no --kubelet-insecure-tls.
package csrapprover

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/apis/certificates"
	certificatesv1helpers "k8s.io/kubernetes/pkg/apis/certificates/v1"
	csrcontroller "k8s.io/kubernetes/pkg/controller/certificates"
)

// reason marks the approvals this package gives.
const reason = "CapstanKubeletServingApproved"

// Run approves kubelet serving CSRs until ctx ends.
func Run(ctx context.Context, cs kubernetes.Interface) {
	f := informers.NewSharedInformerFactory(cs, 0)
	a := &approver{cs: cs}
	cc := csrcontroller.NewCertificateController(ctx, "capstan-kubelet-serving-approver", cs,
		f.Certificates().V1().CertificateSigningRequests(), a.handle)
	f.Start(ctx.Done())
	cc.Run(ctx, 1)
}

type approver struct{ cs kubernetes.Interface }

func (a *approver) handle(ctx context.Context, csr *certificatesv1.CertificateSigningRequest) error {
	if csr.Spec.SignerName != certificatesv1.KubeletServingSignerName || len(csr.Status.Certificate) > 0 {
		return nil
	}
	if approved, denied := csrcontroller.GetCertApprovalCondition(&csr.Status); approved || denied {
		return nil
	}
	node, err := a.check(ctx, csr)
	if err != nil {
		return err
	}
	if node == nil {
		return nil
	}
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: reason,
		Message: "node " + node.Name + " asked for a serving certificate for its own addresses",
	})
	_, err = a.cs.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{})
	if err == nil {
		klog.FromContext(ctx).Info("approved kubelet serving certificate", "csr", csr.Name, "node", node.Name)
	}
	return err
}

// check returns the requesting Node when the request may be approved, nil
// when it must be left for a human, or an error to try again later (the
// Node may not be registered yet).
func (a *approver) check(ctx context.Context, csr *certificatesv1.CertificateSigningRequest) (*corev1.Node, error) {
	log := klog.FromContext(ctx)
	req, err := certificatesv1helpers.ParseCSR(csr.Spec.Request)
	if err != nil {
		log.Info("leaving CSR pending: unparseable request", "csr", csr.Name, "err", err)
		return nil, nil
	}
	usages := sets.New[string]()
	for _, u := range csr.Spec.Usages {
		usages.Insert(string(u))
	}
	if err := certificates.ValidateKubeletServingCSR(req, sets.String(usages)); err != nil {
		log.Info("leaving CSR pending: not a kubelet serving request", "csr", csr.Name, "err", err)
		return nil, nil
	}
	if csr.Spec.Username != req.Subject.CommonName || !slices.Contains(csr.Spec.Groups, "system:nodes") {
		log.Info("leaving CSR pending: requested by someone other than the node", "csr", csr.Name, "user", csr.Spec.Username)
		return nil, nil
	}
	if ok, err := a.mayRequest(ctx, csr); err != nil || !ok {
		return nil, err
	}
	name := strings.TrimPrefix(req.Subject.CommonName, "system:node:")
	node, err := a.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("csr %s: node %s: %w", csr.Name, name, err)
	}
	if bad := foreignNames(req.DNSNames, req.IPAddresses, node); len(bad) > 0 {
		// The kubelet asks again with the addresses it reports; by then the
		// Node may list them.
		return nil, fmt.Errorf("csr %s: names %v are not addresses of node %s", csr.Name, bad, name)
	}
	return node, nil
}

// mayRequest asks the API server whether the requester may create serving
// CSRs for its node at all (system:nodes may, through RBAC's system:node
// rules), so a revoked identity cannot get new certificates.
func (a *approver) mayRequest(ctx context.Context, csr *certificatesv1.CertificateSigningRequest) (bool, error) {
	extra := map[string]authorizationv1.ExtraValue{}
	for k, v := range csr.Spec.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar, err := a.cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: csr.Spec.Username, UID: csr.Spec.UID, Groups: csr.Spec.Groups, Extra: extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Group: "certificates.k8s.io", Resource: "certificatesigningrequests", Verb: "create",
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return sar.Status.Allowed, nil
}

// foreignNames returns the requested names and addresses the Node does not
// report as its own.
func foreignNames(dns []string, ips []net.IP, node *corev1.Node) []string {
	own := sets.New[string]()
	for _, a := range node.Status.Addresses {
		own.Insert(a.Address)
	}
	var bad []string
	for _, d := range dns {
		if !own.Has(d) {
			bad = append(bad, d)
		}
	}
	for _, ip := range ips {
		if !own.Has(ip.String()) {
			bad = append(bad, ip.String())
		}
	}
	return bad
}
