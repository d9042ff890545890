package server

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckLayout(t *testing.T) {
	fresh := t.TempDir()
	if err := checkLayout(fresh); err != nil {
		t.Fatalf("empty dir: %v", err)
	}
	if err := writeLayout(fresh); err != nil {
		t.Fatal(err)
	}
	if err := checkLayout(fresh); err != nil {
		t.Fatalf("this layout: %v", err)
	}

	// What Capstan's own API server left: a CA, etcd data, a hex join token.
	old := t.TempDir()
	os.MkdirAll(filepath.Join(old, "pki"), 0o700)
	os.WriteFile(filepath.Join(old, "pki", "ca.crt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(old, "join-token"), []byte("0123456789abcdef0123456789abcdef0123456789abcdef\n"), 0o600)
	err := checkLayout(old)
	if !errors.Is(err, ErrOldLayout) || !strings.Contains(err.Error(), old) {
		t.Fatalf("old data dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(old, "join-token")); err != nil {
		t.Fatal("the old data dir was changed")
	}

	// A second server's data dir: another server's pki and token.
	second := t.TempDir()
	os.MkdirAll(filepath.Join(second, "pki"), 0o700)
	os.WriteFile(filepath.Join(second, "pki", "ca.crt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(second, "join-token"), []byte("abcdef.0123456789abcdef\n"), 0o600)
	if err := checkLayout(second); err != nil {
		t.Fatalf("shared pki: %v", err)
	}

	newer := t.TempDir()
	os.WriteFile(filepath.Join(newer, layoutFile), []byte("9\n"), 0o644)
	if err := checkLayout(newer); err == nil || !strings.Contains(err.Error(), "newer Capstan") {
		t.Fatalf("newer layout: %v", err)
	}
}

func TestAdvertise(t *testing.T) {
	for _, bad := range []string{"127.0.0.1", "0.0.0.0", "not-an-ip"} {
		if _, err := advertise(&Config{AdvertiseAddress: bad, BindAddress: "0.0.0.0"}); err == nil {
			t.Errorf("--advertise-address %s accepted", bad)
		}
	}
	if a, err := advertise(&Config{BindAddress: "172.30.0.1"}); err != nil || a != "172.30.0.1" {
		t.Errorf("bind address as advertise: %q, %v", a, err)
	}
}

func TestOverridesRefuseOwnedFlags(t *testing.T) {
	cfg := Config{APIServerArgs: []string{"secure-port=7443"}}
	if _, err := parseOverrides(&cfg); err == nil || !strings.Contains(err.Error(), "--secure-port") {
		t.Fatalf("secure-port through --kube-apiserver-arg: %v", err)
	}
	cfg = Config{ControllerManagerArgs: []string{"bogus=1"}}
	if _, err := parseOverrides(&cfg); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("unknown controller-manager flag: %v", err)
	}
}
