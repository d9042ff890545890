package cluster

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/capstan-net/capstan/internal/atomicfile"
	"github.com/capstan-net/capstan/internal/bpffs"
)

// hostDirs are the host-wide directories nodes write to: kubelets keep
// their device-plugin socket in /var/lib/kubelet whatever their root dir,
// containerd's CNI library its cache in /var/lib/cni, shims their sockets
// under /run/capstan, and kubelets link containers' logs in
// /var/log/containers.
var hostDirs = []string{"/var/lib/kubelet", "/var/lib/cni", "/run/capstan", containerLogLinks}

// containerLogLinks is where every kubelet links its containers' logs
// (log collectors read them there), whatever its pod logs dir.
const containerLogLinks = "/var/log/containers"

// removeLogLinks removes the kubelet's links to logs under dir.
func removeLogLinks(dir string) {
	entries, _ := os.ReadDir(containerLogLinks)
	for _, e := range entries {
		p := filepath.Join(containerLogLinks, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			os.Remove(p)
		}
	}
}

// kubeletSysctls are the host-wide settings a kubelet changes when
// protectKernelDefaults is off (pkg/kubelet/cm setupKernelTunables).
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// hostRecord is what the host was like before the first node of any local
// cluster started: the kubelets' sysctls, which host directories did not
// exist, whether bpffs was mounted. It is host-wide (clusters may overlap in time), in /run because a
// reboot resets both.
const hostRecord = "/run/capstan-host.json"

type hostState struct {
	Sysctls  map[string]string `json:"sysctls"`
	MadeDirs []string          `json:"madeDirs,omitempty"`
	// NoBPFFS: /sys/fs/bpf was not mounted (the agents pin there).
	NoBPFFS bool `json:"noBPFFS,omitempty"`
}

// recordHost records the host's state unless a record is there: another
// cluster runs, or one was not taken down (its kubelets may have changed
// the settings already).
func recordHost() error {
	if _, err := os.Stat(hostRecord); err == nil {
		return nil
	}
	st := hostState{Sysctls: readSysctls(), NoBPFFS: !bpffs.Mounted(bpffs.Root)}
	for _, d := range hostDirs {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			st.MadeDirs = append(st.MadeDirs, d)
		}
	}
	data, _ := json.MarshalIndent(st, "", "  ")
	return atomicfile.Write(hostRecord, data, 0o644)
}

// restoreHost puts back what the record holds once no node of any cluster
// runs.
func restoreHost() error {
	data, err := os.ReadFile(hostRecord)
	if err != nil || !noNodes() {
		return nil
	}
	var st hostState
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("%s: %w", hostRecord, err)
	}
	for _, d := range st.MadeDirs {
		os.RemoveAll(d)
	}
	if st.NoBPFFS && bpffsEmpty(bpffs.Root) {
		unmountUnder(bpffs.Root)
	}
	if err := restoreSysctls(st.Sysctls); err != nil {
		return err
	}
	return os.Remove(hostRecord)
}

// noNodes reports whether no node of any cluster (no node cgroup) is left.
func noNodes() bool {
	dir, err := nodeCgroupDir("")
	if err != nil {
		return true
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			return false
		}
	}
	return true
}

func readSysctls() map[string]string {
	out := map[string]string{}
	for _, k := range kubeletSysctls {
		if v, err := os.ReadFile("/proc/sys/" + k); err == nil {
			out[k] = strings.TrimSpace(string(v))
		}
	}
	return out
}

func restoreSysctls(saved map[string]string) error {
	var errs []error
	for k, v := range saved {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// bpffsEmpty reports whether nothing is pinned at dir (the kernel's own
// maps.debug and progs.debug do not count).
func bpffsEmpty(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".debug") {
			return false
		}
	}
	return true
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

func netnsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

// killCgroup ends every process in a v2 cgroup subtree (cgroup.kill, Linux
// 5.14) and waits until it is empty.
func killCgroup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644); err != nil {
		return fmt.Errorf("kill %s: %w", dir, err)
	}
	for range 100 {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || strings.Contains(string(data), "populated 0") {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("processes left in %s after 10s", dir)
}

// removeCgroups removes a cgroup subtree (empty once its processes are
// gone) in every hierarchy, deepest first. A cgroup whose last process
// has just exited stays busy for a moment, so it tries again for a while.
func removeCgroups(rel string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for try := 0; try < 50; try++ {
		left := false
		for _, root := range roots {
			if !removeTree(filepath.Join(root, rel)) {
				left = true
			}
		}
		if !left {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeTree removes the directories of a cgroup tree, deepest first, and
// reports whether none is left.
func removeTree(dir string) bool {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
	_, err := os.Stat(dir)
	return errors.Is(err, os.ErrNotExist)
}

// unmountUnder detaches every mount at or below the given directories
// (pod volumes, container root filesystems, network namespace pins),
// deepest first.
func unmountUnder(dirs ...string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMount(fields[4])
		for _, d := range dirs {
			if d != "" && (p == d || strings.HasPrefix(p, d+"/")) {
				points = append(points, p)
			}
		}
	}
	f.Close()
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
