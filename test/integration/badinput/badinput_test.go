// Package badinput_test runs the capstan binary with input a user may get
// wrong, and checks that each is refused with an error naming what is wrong,
// quickly, and that nothing the user had is deleted.
package badinput_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capstan-net/capstan/control/server/servertest"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

func binary(t *testing.T) string {
	if b := os.Getenv("CAPSTAN_BINARY"); b != "" {
		return b
	}
	root, err := testbin.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := testbin.Build(root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// capstan runs the binary and returns its output; it must fail within timeout.
func capstan(t *testing.T, bin string, timeout time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("capstan %v still ran after %s:\n%s", args, timeout, out)
	}
	if err == nil {
		t.Fatalf("capstan %v succeeded:\n%s", args, out)
	}
	return string(out)
}

func TestServerRefusesUnknownUpstreamFlag(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	out := capstan(t, bin, 30*time.Second, "server", "--data-dir", dir, "--kube-apiserver-arg", "no-such-flag=1")
	if !strings.Contains(out, `--kube-apiserver-arg "no-such-flag=1": kube-apiserver has no flag --no-such-flag`) {
		t.Fatalf("unclear error:\n%s", out)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a refused start wrote %d files into the data dir", len(entries))
	}
}

// Cluster DNS settings are checked before anything is written.
func TestServerRefusesBadDNSSettings(t *testing.T) {
	bin := binary(t)
	for _, c := range []struct{ args, want []string }{
		{[]string{"--cluster-dns", "10.97.0.10"}, []string{"--cluster-dns 10.97.0.10 is outside --service-cidr 10.96.0.0/16"}},
		{[]string{"--service-cidr", "10.43.0.0/16"}, nil}, // the default address follows the range: accepted
		{[]string{"--disable-addon", "coredns", "--disable-addon", "kube-dns"}, []string{`--disable-addon "kube-dns": no such add-on`, "coredns"}},
		{[]string{"--upstream-dns", "none,192.0.2.1"}, []string{"--upstream-dns", `"none" cannot be given with addresses`}},
	} {
		dir := t.TempDir()
		// An unknown upstream flag, checked after them, ends an accepted start.
		out := capstan(t, bin, 30*time.Second, append([]string{"server", "--data-dir", dir, "--kube-apiserver-arg", "no-such-flag=1"}, c.args...)...)
		if c.want == nil {
			c.want = []string{"kube-apiserver has no flag --no-such-flag"}
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("capstan server %v: error does not say %q:\n%s", c.args, w, out)
			}
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("capstan server %v: a refused start wrote %d files into the data dir", c.args, len(entries))
		}
	}
}

func TestServerRefusesOldDataDir(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	// What Capstan's own API server left: a CA, its serving certificate, a hex token, etcd data.
	files := map[string]string{
		"pki/ca.crt": "old ca", "pki/server.crt": "old cert", "etcd/member/snap/db": "data",
		"join-token": "0123456789abcdef0123456789abcdef0123456789abcdef\n", "admin.kubeconfig": "old",
	}
	for name, data := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700)
		os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600)
	}
	out := capstan(t, bin, 30*time.Second, "server", "--data-dir", dir)
	if !strings.Contains(out, "written by an older Capstan") || !strings.Contains(out, dir) {
		t.Fatalf("unclear error:\n%s", out)
	}
	for name, data := range files {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != data {
			t.Fatalf("%s changed or went: %v", name, err)
		}
	}
}

func TestAgentRefusesWrongTokenAndCA(t *testing.T) {
	bin := binary(t)
	srv := servertest.ForTest(t)
	url := "https://127.0.0.1:" + strconv.Itoa(srv.Port)
	dir := t.TempDir()
	wrong := filepath.Join(dir, "token")
	os.WriteFile(wrong, []byte("abcdef.0123456789abcdef\n"), 0o600)
	agent := func(token, ca string) string {
		return capstan(t, bin, time.Minute, "agent", "--server", url, "--token-file", token, "--ca-file", ca,
			"--node-name", "bad-input", "--node-ip", "127.0.0.2", "--data-dir", filepath.Join(dir, "data"), "--run-dir", filepath.Join(dir, "run"))
	}
	ca := filepath.Join(srv.DataDir(), "pki", "ca.crt")
	if out := agent(wrong, ca); !strings.Contains(out, "rejected the join token") || !strings.Contains(out, "--token-file") {
		t.Fatalf("wrong token, unclear error:\n%s", out)
	}
	otherCA := filepath.Join(srv.DataDir(), "pki", "front-proxy-ca.crt")
	good := filepath.Join(srv.DataDir(), "join-token")
	if out := agent(good, otherCA); !strings.Contains(out, "--ca-file") {
		t.Fatalf("wrong CA, unclear error:\n%s", out)
	}
	malformed := filepath.Join(dir, "malformed")
	os.WriteFile(malformed, []byte("not a token\n"), 0o600)
	if out := agent(malformed, ca); !strings.Contains(out, "not a bootstrap token") {
		t.Fatalf("malformed token, unclear error:\n%s", out)
	}
	if out := capstan(t, bin, 30*time.Second, "agent", "--kubelet-arg", "no-such=1", "--node-name", "x", "--node-ip", "127.0.0.2",
		"--data-dir", filepath.Join(dir, "data")); !strings.Contains(out, "the kubelet has no flag --no-such") {
		t.Fatalf("unknown kubelet flag, unclear error:\n%s", out)
	}
}

func TestAgentRefusesBadClusterDNS(t *testing.T) {
	out := capstan(t, binary(t), 30*time.Second, "agent", "--cluster-dns", "10.96.0.10,dns.example", "--node-name", "x",
		"--node-ip", "127.0.0.2", "--data-dir", t.TempDir())
	if !strings.Contains(out, `--cluster-dns: "dns.example" is not an IP address`) {
		t.Fatalf("unclear error:\n%s", out)
	}
}

func TestAgentRefusesOldNodeDir(t *testing.T) {
	bin := binary(t)
	data := t.TempDir()
	// What Capstan's own kubelet left for a node: its credentials and pods.
	node := filepath.Join(data, "nodes", "old-node")
	os.MkdirAll(filepath.Join(node, "pki"), 0o700)
	os.MkdirAll(filepath.Join(node, "pods", "uid-1"), 0o700)
	os.WriteFile(filepath.Join(node, "pki", "kubelet.kubeconfig"), []byte("old"), 0o600)
	out := capstan(t, bin, 30*time.Second, "agent", "--server", "https://127.0.0.1:1", "--token", "abcdef.0123456789abcdef",
		"--ca-file", "/dev/null", "--node-name", "old-node", "--node-ip", "127.0.0.2", "--data-dir", data, "--run-dir", filepath.Join(data, "run"))
	if !strings.Contains(out, "written by an older Capstan") || !strings.Contains(out, node) {
		t.Fatalf("unclear error:\n%s", out)
	}
	if got, err := os.ReadFile(filepath.Join(node, "pki", "kubelet.kubeconfig")); err != nil || string(got) != "old" {
		t.Fatalf("the old node's credentials changed or went: %v", err)
	}
	if _, err := os.Stat(filepath.Join(node, "pods", "uid-1")); err != nil {
		t.Fatalf("the old node's pods went: %v", err)
	}
}
