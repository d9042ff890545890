// Package testbin builds the capstan binaries once for a suite that runs
// them as separate processes, the way users do.
package testbin

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// RepoRoot is the directory of the module the tests belong to.
func RepoRoot() (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(gomod))), nil
}

// Build runs the Makefile's build (so the embedded kubectl reports its
// real version) into dir, and returns the path of capstan; what nodes run
// (capstan-cni, capstan-pause, containerd and its shim) sits beside it.
func Build(root, dir string) (string, error) {
	out := filepath.Join(dir, "capstan")
	cmd := exec.Command("make", "-s", "build", "CAPSTAN="+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build capstan: %v\n%s", err, b)
	}
	return out, nil
}
