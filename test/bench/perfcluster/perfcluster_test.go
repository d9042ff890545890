package perfcluster

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKeepLogs(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "node-1.log"), []byte("agent says hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst, err := keepLogs(src)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dst)
	b, err := os.ReadFile(filepath.Join(dst, "node-1.log"))
	if err != nil || string(b) != "agent says hello\n" {
		t.Fatalf("kept log %q, %v", b, err)
	}
	if _, err := keepLogs(filepath.Join(src, "missing")); err == nil {
		t.Error("keeping a missing log directory succeeded")
	}
}
