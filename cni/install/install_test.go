package install

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPluginsCopiesUnderCapstanNames(t *testing.T) {
	src, bin := t.TempDir(), filepath.Join(t.TempDir(), "bin")
	for name, data := range map[string]string{"capstan-cni": "cni", "portmap": "pm"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A portmap the node had before stays as it was.
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "portmap"), []byte("theirs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Plugins(src, bin); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"capstan-cni": "cni", PortmapName: "pm", "portmap": "theirs"} {
		data, err := os.ReadFile(filepath.Join(bin, name))
		if err != nil || string(data) != want {
			t.Errorf("%s = %q, %v; want %q", name, data, err, want)
		}
		if fi, err := os.Stat(filepath.Join(bin, name)); err != nil || fi.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s not executable: %v", name, err)
		}
	}
	entries, _ := os.ReadDir(bin)
	if len(entries) != 3 {
		t.Errorf("bin dir holds %d files, want 3 (no temporary files left)", len(entries))
	}
}

func TestPluginsNeedsCapstanCNI(t *testing.T) {
	if _, err := Plugins(t.TempDir(), t.TempDir()); err == nil {
		t.Fatal("installing without capstan-cni succeeded")
	}
}
