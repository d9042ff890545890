//go:build e2e

package e2e_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capstan-net/capstan/test/conformance"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

// upstreamScenarios run Kubernetes' own tests: the [sig-network]
// conformance specs of e2e.test (make e2e-tools), whose images (make
// e2e-images) every node of the suite's clusters imports.
func upstreamScenarios() []scenario {
	return []scenario{
		{"upstream e2e: the [sig-network] [Conformance] specs pass", full, func(t *testing.T, e *env) {
			bin := upstreamBin(t)
			kubectl := filepath.Join(t.TempDir(), "kubectl")
			if err := os.Symlink(e.capstan, kubectl); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(bin, "conformance", "e2e")
			os.RemoveAll(dir)
			var out strings.Builder
			res, err := conformance.Run{
				Ginkgo: filepath.Join(bin, "ginkgo"), E2ETest: filepath.Join(bin, "e2e.test"),
				Kubeconfig: e.kubeconfig, Kubectl: kubectl, Dir: dir, Name: "sig-network",
				Focus: conformance.FocusNetworkConformance, Skip: conformance.Serial, Procs: 4, Nodes: len(e.nodes),
				Timeout: 20 * time.Minute, Output: &out,
			}.Exec(context.Background())
			if err != nil {
				t.Fatalf("%v\n%s", err, tailLines(out.String(), 40))
			}
			t.Logf("upstream [sig-network] [Conformance]: %d passed, %d failed, %d skipped (ginkgo output: %s)",
				res.Count(conformance.Passed), res.Count(conformance.Failed), res.Count(conformance.Skipped), dir)
			for _, s := range res.Specs {
				if s.State != conformance.Passed {
					t.Errorf("%s: %s: %s", s.State, s.Name, s.Reason)
				}
			}
			if n := res.Count(conformance.Passed); n < 47 {
				t.Errorf("%d specs passed, want all 47", n)
			}
		}},
	}
}

// upstreamBin is where make left e2e.test, ginkgo and the e2e images.
func upstreamBin(t *testing.T) string {
	return makeBin(t, "make e2e-tools e2e-images", "e2e.test", "ginkgo", filepath.Join("images", "e2e-images.tar"))
}

// makeBin is the directory make left its outputs in: CAPSTAN_BIN_DIR,
// which make e2e sets, else the repository's bin/. It fails the test,
// saying what builds them, when one of files is not there.
func makeBin(t *testing.T, builder string, files ...string) string {
	bin := os.Getenv("CAPSTAN_BIN_DIR")
	if bin == "" {
		root, err := testbin.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(root, "bin")
	}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
			entries, _ := os.ReadDir(bin)
			var have []string
			for _, e := range entries {
				have = append(have, e.Name())
			}
			t.Fatalf("%v (%s builds it; %s holds %v)", err, builder, bin, have)
		}
	}
	return bin
}
