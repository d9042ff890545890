package kubelet

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// PrepareCgroupRoot makes the kubelet's cgroup root usable before it starts.
// On cgroup v1 (and hybrid) hosts the kubelet wants the root in every
// hierarchy, and a new cpuset cgroup starts with no CPUs or memory nodes; on
// cgroup v2 the root's parents must hand their controllers down.
func PrepareCgroupRoot(root string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if m.v2 {
			if err := delegate(m.dir, root); err != nil {
				return err
			}
			continue
		}
		if err := os.MkdirAll(filepath.Join(m.dir, root), 0o755); err != nil {
			return fmt.Errorf("cgroup root in %s: %w", m.dir, err)
		}
		if strings.Contains(m.options, "cpuset") {
			if err := inheritCpuset(m.dir, root); err != nil {
				return err
			}
		}
	}
	return nil
}

type cgroupMount struct {
	dir, options string
	v2           bool
}

// cgroupMounts lists the cgroup hierarchies from /proc/self/mountinfo.
func cgroupMounts() ([]cgroupMount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMounts(f)
}

func parseMounts(r io.Reader) ([]cgroupMount, error) {
	var out []cgroupMount
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// ... mountpoint(5th) ... - fstype source superoptions
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld != "-" || i+3 >= len(fields) || len(fields) < 5 {
				continue
			}
			switch fields[i+1] {
			case "cgroup2":
				out = append(out, cgroupMount{dir: fields[4], v2: true})
			case "cgroup":
				out = append(out, cgroupMount{dir: fields[4], options: fields[i+3]})
			}
		}
	}
	return out, sc.Err()
}

// inheritCpuset fills cpuset.cpus and cpuset.mems down the path from the
// hierarchy's root, where they are empty.
func inheritCpuset(mount, root string) error {
	parent := mount
	for _, part := range strings.Split(strings.Trim(root, "/"), "/") {
		dir := filepath.Join(parent, part)
		for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
			have, _ := os.ReadFile(filepath.Join(dir, file))
			if strings.TrimSpace(string(have)) != "" {
				continue
			}
			want, err := os.ReadFile(filepath.Join(parent, file))
			if err != nil {
				return fmt.Errorf("cpuset: %w", err)
			}
			if err := os.WriteFile(filepath.Join(dir, file), want, 0o644); err != nil {
				return fmt.Errorf("cpuset %s: %w", dir, err)
			}
		}
		parent = dir
	}
	return nil
}

// delegate creates root in a cgroup v2 hierarchy and enables, at each level
// above it, the controllers the level has, so the kubelet finds them at its
// root. On a hybrid host the v2 hierarchy has none, and this only creates
// the directories.
func delegate(mount, root string) error {
	dir := mount
	for _, part := range strings.Split(strings.Trim(root, "/"), "/") {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		if err != nil {
			return fmt.Errorf("cgroup v2 %s: %w", dir, err)
		}
		var enable []string
		for _, c := range strings.Fields(string(data)) {
			enable = append(enable, "+"+c)
		}
		if len(enable) > 0 {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0o644); err != nil {
				return fmt.Errorf("delegate controllers below %s: %w", dir, err)
			}
		}
		dir = filepath.Join(dir, part)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup root %s: %w", dir, err)
		}
	}
	return nil
}
