// Package api_test is the integration suite of Capstan's API server: each
// test runs a real `capstan server` (embedded etcd, or the external etcd
// named by CAPSTAN_TEST_ETCD) and talks to it with client-go, raw HTTP and
// the embedded kubectl.
package api_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/capstan-net/capstan/control/server/servertest"
	"github.com/capstan-net/capstan/test/integration/testbin"
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
	if repoRoot, err = testbin.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if capstanBin, err = testbin.Build(repoRoot, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
