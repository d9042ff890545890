// Package install puts Capstan's CNI plugins into a node's CNI plugin
// directory, as the init container of Capstan's DaemonSet does.
package install

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/capstan-net/capstan/cni"
)

// PortmapName is the name the upstream portmap plugin is installed under:
// a name of Capstan's own, so that installing and removing Capstan never
// touches a portmap the node had before.
const PortmapName = "capstan-portmap"

// Plugins copies capstan-cni and, when present, portmap from srcDir into
// binDir (as cni.PluginType and PortmapName), each replaced atomically so
// that a runtime calling the plugin meanwhile never runs half a file.
func Plugins(srcDir, binDir string) ([]string, error) {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, fmt.Errorf("cni bin dir: %w", err)
	}
	var done []string
	for src, dst := range map[string]string{cni.PluginType: cni.PluginType, "portmap": PortmapName} {
		from := filepath.Join(srcDir, src)
		if _, err := os.Stat(from); errors.Is(err, os.ErrNotExist) && src == "portmap" {
			continue
		}
		to := filepath.Join(binDir, dst)
		if err := copyFile(from, to); err != nil {
			return done, fmt.Errorf("install %s: %w", to, err)
		}
		done = append(done, to)
	}
	return done, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(to), "."+filepath.Base(to)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), to)
}
