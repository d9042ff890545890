package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Precedence: flag, then CAPSTAN_* environment, then the config file, then
// the default.
func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "capstan.yaml")
	if err := os.WriteFile(file, []byte("data-dir: /from/file\nsecure-port: 7000\nservice-cidr: 10.50.0.0/16\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CAPSTAN_SECURE_PORT", "7100")
	t.Setenv("CAPSTAN_BIND_ADDRESS", "127.0.0.9")
	cmd := newServerCmd()
	cmd.Flags().String("config", "", "")
	if err := cmd.Flags().Parse([]string{"--config", file, "--bind-address", "127.0.0.2"}); err != nil {
		t.Fatal(err)
	}
	v, err := loadConfig(cmd)
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]string{
		"data-dir":                "/from/file", // file beats default
		"secure-port":             "7100",       // env beats file
		"bind-address":            "127.0.0.2",  // flag beats env
		"service-cidr":            "10.50.0.0/16",
		"service-node-port-range": "30000-32767", // default
	}
	for k, want := range checks {
		if got := v.GetString(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

func TestConfigFileMissing(t *testing.T) {
	cmd := newServerCmd()
	cmd.Flags().String("config", "", "")
	if err := cmd.Flags().Parse([]string{"--config", "/nonexistent/capstan.yaml"}); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(cmd); err == nil {
		t.Fatal("a missing config file was accepted")
	}
}

// A misspelt key must not silently leave its setting at the default.
func TestConfigUnknownKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "capstan.yaml")
	if err := os.WriteFile(file, []byte("data-dir: /from/file\nsecure-prot: 7000\nnested:\n  x: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newServerCmd()
	cmd.Flags().String("config", "", "")
	if err := cmd.Flags().Parse([]string{"--config", file}); err != nil {
		t.Fatal(err)
	}
	_, err := loadConfig(cmd)
	if err == nil {
		t.Fatal("a config file with unknown keys was accepted")
	}
	for _, want := range []string{file, "nested, secure-prot", "--help"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestJoinToken(t *testing.T) {
	file := filepath.Join(t.TempDir(), "join-token")
	if err := os.WriteFile(file, []byte("abc123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := joinToken("", file); err != nil || tok != "abc123" {
		t.Fatalf("from file: %q, %v", tok, err)
	}
	if tok, err := joinToken("direct", ""); err != nil || tok != "direct" {
		t.Fatalf("direct: %q, %v", tok, err)
	}
	if _, err := joinToken("direct", file); err == nil {
		t.Fatal("both --token and --token-file accepted")
	}
	if _, err := joinToken("", filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Fatalf("missing file: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := joinToken("", empty); err == nil {
		t.Fatal("an empty token file accepted")
	}
}
