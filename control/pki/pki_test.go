package pki_test

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/control/pki"
)

func TestCAReloadAndServingCert(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.Equal(again.Cert) {
		t.Fatal("a second start made a new CA instead of loading the first")
	}
	if st, _ := os.Stat(filepath.Join(dir, "ca.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v, want 0600", st.Mode().Perm())
	}
	certPath, _, err := pki.EnsureServingCert(dir, ca, []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(certPath)
	// Same hosts: kept. A new host: reissued.
	pki.EnsureServingCert(dir, ca, []string{"127.0.0.1"})
	if kept, _ := os.ReadFile(certPath); string(kept) != string(first) {
		t.Fatal("serving certificate reissued though it covered every host")
	}
	pki.EnsureServingCert(dir, ca, []string{"127.0.0.1", "10.0.0.7"})
	if re, _ := os.ReadFile(certPath); string(re) == string(first) {
		t.Fatal("serving certificate not reissued for a new host")
	}
}

func TestTokenAndKubeconfig(t *testing.T) {
	dir := t.TempDir()
	tok, err := pki.LoadOrCreateToken(filepath.Join(dir, "join-token"))
	if err != nil || len(tok) < 32 {
		t.Fatalf("token %q, %v", tok, err)
	}
	if again, _ := pki.LoadOrCreateToken(filepath.Join(dir, "join-token")); again != tok {
		t.Fatal("token changed across loads")
	}
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.NewKeyPair("admin", []string{"system:masters"}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admin.kubeconfig")
	if err := pki.WriteKubeconfig(path, pki.Kubeconfig{Server: "https://127.0.0.1:6443", CAPEM: ca.CertPEM, CertPEM: cert, KeyPEM: key, User: "admin"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig mode %v, want 0600", st.Mode().Perm())
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil || cfg.Host != "https://127.0.0.1:6443" || len(cfg.CertData) == 0 {
		t.Fatalf("kubeconfig did not load: %+v %v", cfg, err)
	}
}
