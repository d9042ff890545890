// Package bpffs finds and mounts the bpf filesystem, where the dataplane
// pins its maps and links so they outlive the agent.
package bpffs

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Root is where the bpf filesystem is normally mounted; nodes pin under
// Root/capstan/<node>.
const Root = "/sys/fs/bpf"

// Mounted reports whether dir is a bpf filesystem.
func Mounted(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// Ensure mounts a bpf filesystem at dir unless one is there, as Cilium's
// agent does.
func Ensure(dir string) error {
	if Mounted(dir) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bpffs dir: %w", err)
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}

// Share makes the mount at dir a shared one, as systemd mounts everything:
// a pod that mounts bpffs there for the host (Bidirectional propagation,
// as Capstan's and Cilium's init containers do) needs it so, and a
// container runtime refuses that pod otherwise.
func Share(dir string) error {
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", dir, err)
	}
	return nil
}
