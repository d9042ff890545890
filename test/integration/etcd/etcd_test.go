// Package etcd_test runs capstan servers on an external etcd member (upstream
// etcd in its own process, with TLS and client certificates): what they write survives a
// killed server, two clusters keep apart under their prefixes, and two
// servers of one cluster share it with one controller-manager and one
// scheduler at a time, the other taking over when the first dies.
package etcd_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/capstan-net/capstan/control/pki"
	"github.com/capstan-net/capstan/control/server/servertest"
)

// etcdTLS starts an etcd member that wants client certificates and returns
// the capstan server flags that reach it.
func etcdTLS(t *testing.T) []string {
	dir := t.TempDir()
	bin := filepath.Join(dir, "etcd")
	if out, err := exec.Command("go", "build", "-o", bin, "./etcdmember").CombinedOutput(); err != nil {
		t.Fatalf("build etcd: %v\n%s", err, out)
	}
	ca, err := pki.LoadOrCreateCA(dir, "ca", "test-etcd-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.EnsureCert(dir, "server", pki.CertSpec{CommonName: "etcd", Server: true, Client: true, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey, err := ca.EnsureCert(dir, "client", pki.CertSpec{CommonName: "capstan", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	cu, pu := fmt.Sprintf("https://127.0.0.1:%d", freePort(t)), fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin, "--name", "t", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu, "--initial-cluster", "t="+pu,
		"--cert-file", srvCert, "--key-file", srvKey, "--trusted-ca-file", ca.CertFile, "--client-cert-auth",
		"--log-level", "error")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return []string{"--etcd-endpoints", cu, "--etcd-cafile", ca.CertFile, "--etcd-certfile", cliCert, "--etcd-keyfile", cliKey}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func configMap(t *testing.T, cs kubernetes.Interface, name string) error {
	t.Helper()
	_, err := cs.CoreV1().ConfigMaps("default").Get(context.Background(), name, metav1.GetOptions{})
	return err
}

func TestExternalEtcdKeepsDataAndPrefixes(t *testing.T) {
	etcd := etcdTLS(t)
	ctx := context.Background()
	a := servertest.ForTest(t, append(etcd, "--etcd-prefix", "/cluster-a")...)
	if _, err := a.Client().CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kept"}, Data: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := a.Restart(ctx); err != nil {
		t.Fatalf("restart after SIGKILL: %v", err)
	}
	if err := configMap(t, a.Client(), "kept"); err != nil {
		t.Fatalf("a write did not survive a killed server: %v", err)
	}
	b := servertest.ForTest(t, append(etcd, "--etcd-prefix", "/cluster-b")...)
	if err := configMap(t, b.Client(), "kept"); !apierrors.IsNotFound(err) {
		t.Fatalf("another prefix sees cluster a's objects: %v", err)
	}
}

func holder(cs kubernetes.Interface, lease string) (string, time.Time) {
	l, err := cs.CoordinationV1().Leases("kube-system").Get(context.Background(), lease, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil || l.Spec.RenewTime == nil {
		return "", time.Time{}
	}
	return *l.Spec.HolderIdentity, l.Spec.RenewTime.Time
}

// sharePKI gives a second server the first one's certificates, keys and
// token: servers of one cluster must sign and verify the same tokens.
func sharePKI(t *testing.T, from string) string {
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-a", filepath.Join(from, "pki"), filepath.Join(from, "join-token"), dir).CombinedOutput(); err != nil {
		t.Fatalf("copy pki: %v %s", err, out)
	}
	return dir
}

func TestControllerFailover(t *testing.T) {
	etcd := etcdTLS(t)
	args := append(etcd, "--etcd-prefix", "/ha")
	a := servertest.ForTest(t, args...)
	b := servertest.ForTestIn(t, sharePKI(t, a.DataDir()), args...)
	for _, lease := range []string{"kube-controller-manager", "kube-scheduler"} {
		var first string
		deadline := time.Now().Add(60 * time.Second)
		for first == "" && time.Now().Before(deadline) {
			first, _ = holder(a.Client(), lease)
			time.Sleep(200 * time.Millisecond)
		}
		if first == "" {
			t.Fatalf("no server took the %s lease", lease)
		}
		if hb, _ := holder(b.Client(), lease); hb != first {
			t.Fatalf("%s: servers disagree on the holder: %q vs %q", lease, first, hb)
		}
	}
	// Kill a: its loops, if it led, must move to b within lease + retry.
	a.Kill()
	killed := time.Now()
	cs := b.Client()
	for _, lease := range []string{"kube-controller-manager", "kube-scheduler"} {
		for {
			_, renewed := holder(cs, lease)
			if renewed.After(killed.Add(time.Second)) {
				break
			}
			if time.Since(killed) > 40*time.Second {
				t.Fatalf("%s lease not renewed by the survivor within 40s", lease)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Logf("leases held by the survivor %s after the kill", time.Since(killed).Round(100*time.Millisecond))

	// The survivor's loops work: a deleted namespace is emptied and goes.
	ctx := context.Background()
	ns := "ha-ns"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("the surviving server's namespace controller did not finish deleting a namespace")
}
