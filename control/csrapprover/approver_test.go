package csrapprover

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func csrFor(t *testing.T, cn string, ips ...string) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn, Organization: []string{"system:nodes"}}}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func newCSR(name, user string, req []byte) *certificatesv1.CertificateSigningRequest {
	return &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request: req, SignerName: certificatesv1.KubeletServingSignerName, Username: user,
			Groups: []string{"system:nodes", "system:authenticated"},
			Usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth},
		},
	}
}

func approved(cs *fake.Clientset, name string) bool {
	csr, err := cs.CertificatesV1().CertificateSigningRequests().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return false
	}
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			return true
		}
	}
	return false
}

func TestApprover(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, {Type: corev1.NodeHostName, Address: "n1"}}}}
	cases := []struct {
		name    string
		csr     *certificatesv1.CertificateSigningRequest
		allowed bool
		approve bool
		wantErr bool
	}{
		{"own address", newCSR("a", "system:node:n1", csrFor(t, "system:node:n1", "10.0.0.1")), true, true, false},
		{"foreign address", newCSR("b", "system:node:n1", csrFor(t, "system:node:n1", "10.0.0.1", "10.9.9.9")), true, false, true},
		{"asked for another node", newCSR("c", "system:node:n2", csrFor(t, "system:node:n1", "10.0.0.1")), true, false, false},
		{"not authorized", newCSR("d", "system:node:n1", csrFor(t, "system:node:n1", "10.0.0.1")), false, false, false},
		{"unknown node", newCSR("e", "system:node:n3", csrFor(t, "system:node:n3", "10.0.0.3")), true, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(node, tc.csr)
			cs.PrependReactor("create", "subjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, &authorizationv1.SubjectAccessReview{Status: authorizationv1.SubjectAccessReviewStatus{Allowed: tc.allowed}}, nil
			})
			err := (&approver{cs: cs}).handle(context.Background(), tc.csr.DeepCopy())
			if (err != nil) != tc.wantErr {
				t.Fatalf("handle: %v, want error %v", err, tc.wantErr)
			}
			if got := approved(cs, tc.csr.Name); got != tc.approve {
				t.Fatalf("approved %v, want %v", got, tc.approve)
			}
		})
	}
}

func TestApproverIgnoresOtherSigners(t *testing.T) {
	csr := newCSR("x", "system:node:n1", csrFor(t, "system:node:n1", "10.0.0.1"))
	csr.Spec.SignerName = certificatesv1.KubeAPIServerClientKubeletSignerName
	cs := fake.NewClientset(csr)
	if err := (&approver{cs: cs}).handle(context.Background(), csr); err != nil || approved(cs, "x") {
		t.Fatalf("client CSR: err %v approved %v", err, approved(cs, "x"))
	}
}
