// Package ha_test runs two capstan servers on one etcd cluster and checks
// that each control loop runs in exactly one of them, and moves to the
// other within the lease duration when its server dies.
package ha_test

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

	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

// etcdEndpoints is CAPSTAN_TEST_ETCD, or an etcd process this test starts.
func etcdEndpoints(t *testing.T) []string {
	if e := servertest.EnvEtcd(); e != nil {
		return e
	}
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatal("the HA test needs an etcd binary (scripts/install-deps.sh installs Debian's etcd-server)")
	}
	free := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	cu := fmt.Sprintf("http://127.0.0.1:%d", free())
	pu := fmt.Sprintf("http://127.0.0.1:%d", free())
	dir := t.TempDir()
	cmd := exec.Command(bin, "--name", "ha", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", "ha="+pu, "--log-level", "error")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return []string{cu}
}

func leaseHolder(t *testing.T, s *servertest.Server, name string) string {
	l, err := s.Client().CoordinationV1().Leases("kube-system").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func TestControllerFailover(t *testing.T) {
	eps := etcdEndpoints(t)
	prefix := fmt.Sprintf("/ha-test/%d", time.Now().UnixNano())
	a := servertest.Start(t, servertest.Options{EtcdEndpoints: eps, EtcdPrefix: prefix})
	b := servertest.Start(t, servertest.Options{EtcdEndpoints: eps, EtcdPrefix: prefix})
	const lease = "capstan-controller-manager"

	var holder string
	deadline := time.Now().Add(30 * time.Second)
	for holder == "" && time.Now().Before(deadline) {
		holder = leaseHolder(t, a, lease)
		time.Sleep(200 * time.Millisecond)
	}
	if holder == "" {
		t.Fatal("no server took the controller-manager lease")
	}
	// Both servers see one holder (one etcd, one Lease).
	if hb := leaseHolder(t, b, lease); hb != holder {
		t.Fatalf("servers disagree on the holder: %q vs %q", holder, hb)
	}
	leader, follower := a, b
	switch holder {
	case a.Identity():
	case b.Identity():
		leader, follower = b, a
	default:
		t.Fatalf("lease held by %q, neither server (%q, %q)", holder, a.Identity(), b.Identity())
	}
	leader.Kill()
	killed := time.Now()

	var next string
	for time.Since(killed) < 25*time.Second {
		next = leaseHolder(t, follower, lease)
		if next != "" && next != holder {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(killed)
	if next == "" || next == holder {
		t.Fatalf("lease still held by the killed server %q after %s", holder, took)
	}
	if took > 15*time.Second {
		t.Fatalf("failover took %s, want within the 15s lease", took)
	}
	t.Logf("failover from %s to %s in %s", holder, next, took.Round(100*time.Millisecond))

	// The survivor's loops work: a deleted namespace is emptied and goes.
	ctx := context.Background()
	cs := follower.Client()
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
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("the surviving server's namespace controller did not finish deleting a namespace")
}
