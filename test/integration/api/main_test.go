// Package api_test is the integration suite of Capstan's API server: each
// test runs a real `capstan server` (embedded etcd, or the external etcd
// named by CAPSTAN_TEST_ETCD) and talks to it with client-go, raw HTTP and
// the embedded kubectl.
package api_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// capstanBin is the `capstan` binary built once for the kubectl tests,
// from the module at repoRoot.
var capstanBin, repoRoot string

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "capstan-api-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go env GOMOD:", err)
		return 1
	}
	repoRoot = filepath.Dir(strings.TrimSpace(string(gomod)))
	capstanBin = filepath.Join(dir, "capstan")
	if err := buildCapstan(repoRoot, capstanBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// buildCapstan builds ./cmd/capstan of the module at root.
func buildCapstan(root, out string) error {
	// The Makefile's build, so kubectl reports its real version.
	cmd := exec.Command("make", "-s", "build", "CAPSTAN="+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build capstan: %v\n%s", err, b)
	}
	return nil
}
