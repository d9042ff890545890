package bootstrap

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "join-token")
	tok, err := LoadOrCreateToken(path)
	if err != nil {
		t.Fatal(err)
	}
	id, secret, err := ParseToken(tok)
	if err != nil || len(id) != 6 || len(secret) != 16 {
		t.Fatalf("token %q: %v", tok, err)
	}
	if again, _ := LoadOrCreateToken(path); again != tok {
		t.Fatal("token changed across starts")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v", st.Mode().Perm())
	}
	bad := filepath.Join(t.TempDir(), "join-token")
	os.WriteFile(bad, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	if _, err := LoadOrCreateToken(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("a file holding something else: %v", err)
	}
	if data, _ := os.ReadFile(bad); !strings.HasPrefix(string(data), "0123") {
		t.Fatal("a foreign token file was overwritten")
	}
	for _, s := range []string{"", "abcdef.0123456789abcde", "ABCDEF.0123456789abcdef", "abcdef:0123456789abcdef"} {
		if _, _, err := ParseToken(s); err == nil {
			t.Errorf("ParseToken(%q) accepted", s)
		}
	}
}

func TestTokenSecret(t *testing.T) {
	s, err := TokenSecret("abcdef.0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "bootstrap-token-abcdef" || s.Namespace != "kube-system" || s.Type != corev1.SecretTypeBootstrapToken {
		t.Fatalf("secret %s/%s type %s", s.Namespace, s.Name, s.Type)
	}
	d := s.StringData
	if d["token-secret"] != "0123456789abcdef" || d["usage-bootstrap-authentication"] != "true" || d["auth-extra-groups"] != NodeGroup {
		t.Fatalf("secret data %v", d)
	}
	if _, ok := d["expiration"]; ok {
		t.Fatal("join token expires")
	}
}
