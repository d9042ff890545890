package pki_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/control/pki"
)

func read(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestCAReload(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	again, err := pki.LoadOrCreateCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.Equal(again.Cert) {
		t.Fatal("a second start made a new CA instead of loading the first")
	}
	if st, _ := os.Stat(filepath.Join(dir, "ca.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v, want 0600", st.Mode().Perm())
	}
	// A CA certificate without its key must not be replaced.
	os.Remove(filepath.Join(dir, "ca.key"))
	if _, err := pki.LoadOrCreateCA(dir, "ca", "test-ca"); err == nil {
		t.Fatal("a CA with its key missing was accepted (or replaced)")
	}
}

func TestEnsureCertKeepsOrReissues(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	spec := pki.CertSpec{CommonName: "kube-apiserver", Server: true, Hosts: []string{"127.0.0.1", "localhost"}}
	certPath, _, err := ca.EnsureCert(dir, "apiserver", spec)
	if err != nil {
		t.Fatal(err)
	}
	first := read(t, certPath)
	if _, _, err := ca.EnsureCert(dir, "apiserver", spec); err != nil || read(t, certPath) != first {
		t.Fatalf("same spec: certificate reissued (%v)", err)
	}
	spec.Hosts = append(spec.Hosts, "10.0.0.7")
	ca.EnsureCert(dir, "apiserver", spec)
	second := read(t, certPath)
	if second == first {
		t.Fatal("a new host did not reissue the certificate")
	}
	c, err := pki.ParseCert([]byte(second))
	if err != nil || c.VerifyHostname("10.0.0.7") != nil {
		t.Fatalf("reissued certificate does not cover the new host: %v", err)
	}
	spec.Organizations = []string{"system:masters"}
	ca.EnsureCert(dir, "apiserver", spec)
	if read(t, certPath) == second {
		t.Fatal("a new organization did not reissue the certificate")
	}
	// A certificate signed by another CA is replaced.
	other, _ := pki.LoadOrCreateCA(t.TempDir(), "ca", "other")
	other.EnsureCert(dir, "apiserver", spec)
	ca.EnsureCert(dir, "apiserver", spec)
	c, _ = pki.ParseCert([]byte(read(t, certPath)))
	if c.CheckSignatureFrom(ca.Cert) != nil {
		t.Fatal("a certificate of another CA was kept")
	}
}

func TestServiceAccountKey(t *testing.T) {
	dir := t.TempDir()
	key, pub, err := pki.EnsureServiceAccountKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	k := read(t, key)
	if !strings.Contains(read(t, pub), "PUBLIC KEY") {
		t.Fatal("sa.pub holds no public key")
	}
	if _, _, err := pki.EnsureServiceAccountKey(dir); err != nil || read(t, key) != k {
		t.Fatal("the service-account key changed across starts: every token would be invalid")
	}
}

func TestClientKubeconfig(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admin.kubeconfig")
	spec := pki.CertSpec{CommonName: "kubernetes-admin", Organizations: []string{"system:masters"}}
	if err := ca.EnsureClientKubeconfig(path, "https://127.0.0.1:6443", spec); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig mode %v, want 0600", st.Mode().Perm())
	}
	first := read(t, path)
	ca.EnsureClientKubeconfig(path, "https://127.0.0.1:6443", spec)
	if read(t, path) != first {
		t.Fatal("an up-to-date kubeconfig was rewritten")
	}
	ca.EnsureClientKubeconfig(path, "https://10.0.0.1:6443", spec)
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil || cfg.Host != "https://10.0.0.1:6443" || len(cfg.CertData) == 0 {
		t.Fatalf("kubeconfig for a new address: %+v %v", cfg, err)
	}
	c, err := pki.ParseCert(cfg.CertData)
	if err != nil || c.Subject.CommonName != "kubernetes-admin" || c.Subject.Organization[0] != "system:masters" {
		t.Fatalf("client certificate subject: %v %v", c.Subject, err)
	}
}
