// Package cgroup2 finds the cgroup v2 hierarchy, which is /sys/fs/cgroup on
// unified hosts and /sys/fs/cgroup/unified on hybrid ones.
package cgroup2

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Root returns where the cgroup v2 hierarchy is mounted.
func Root() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return parse(string(data))
}

// parse finds the cgroup2 mount point in mountinfo text: the mount point is
// field 5, the filesystem type follows the "-" separator.
func parse(mountinfo string) (string, error) {
	for _, line := range strings.Split(mountinfo, "\n") {
		fields := strings.Fields(line)
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 filesystem mounted")
}

// In returns the cgroup v2 hierarchy of the cgroup filesystem mounted at
// mount: mount itself on a unified host, its unified/ directory on a
// hybrid one. Unlike Root it looks at a given place, such as the host's
// /sys/fs/cgroup mounted into a container beside the container's own.
func In(mount string) (string, error) {
	for _, dir := range []string{mount, filepath.Join(mount, "unified")} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 hierarchy at %s or in its unified/ directory", mount)
}
