package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// layout versions a node's directory: "2" is the upstream kubelet's; the
// first layout (Capstan's own kubelet) had no marker.
const (
	layoutFile    = "capstan-layout"
	layoutVersion = "2"
)

// checkLayout refuses a node directory an older Capstan wrote, before
// anything in it is touched.
func checkLayout(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, layoutFile))
	if err == nil {
		if v := strings.TrimSpace(string(data)); v != layoutVersion {
			return fmt.Errorf("node dir %s has layout %q, this Capstan needs %q; nothing was changed: move it aside", dir, v, layoutVersion)
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, p := range []string{"pki", "pods", "logs"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			return fmt.Errorf("node dir %s was written by an older Capstan (it holds %s/ but no %s); nothing was changed: stop its pods and move it aside, or give another --data-dir", dir, p, layoutFile)
		}
	}
	return nil
}

func writeLayout(dir string) error {
	return atomicfile.Write(filepath.Join(dir, layoutFile), []byte(layoutVersion+"\n"), 0o644)
}
