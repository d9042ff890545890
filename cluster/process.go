package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/capstan-net/capstan/internal/atomicfile"
	"github.com/capstan-net/capstan/internal/cgroup2"
)

func (c *Config) pidFile(name string) string { return filepath.Join(c.dir(), name+".pid") }
func (c *Config) logFile(name string) string { return filepath.Join(c.dir(), "logs", name+".log") }

// running returns the pid of a live process we started under name.
func (c *Config) running(name string) int {
	data, err := os.ReadFile(c.pidFile(name))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	// A process in the middle of an exec (nsenter becoming capstan, just
	// after start) shows an empty command line for a moment: it is ours.
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if len(cmdline) > 0 && !strings.Contains(string(cmdline), "capstan") && !strings.Contains(string(cmdline), "kube-proxy") {
		return 0 // the pid was reused
	}
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if f := strings.Fields(string(stat)); len(f) > 2 && f[2] == "Z" {
		return 0 // exited, not yet reaped
	}
	return pid
}

// start runs args detached (own session, output to the log) unless the
// process is already running. With cgroup set (a path in the v2
// hierarchy, a leaf of a node's), the process starts there, so Down can end
// all of a node's processes at once.
func (c *Config) start(name string, args []string, cgroup string) error {
	if pid := c.running(name); pid != 0 {
		c.Log.Info("already running", "process", name, "pid", pid)
		return nil
	}
	logf, err := os.OpenFile(c.logFile(name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cgroup != "" {
		fd, err := cgroupFD(cgroup)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	c.Log.Info("started", "process", name, "pid", cmd.Process.Pid, "log", c.logFile(name))
	go cmd.Wait() // reap it if it exits while we still run
	return atomicfile.Write(c.pidFile(name), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
}

// nodeCgroup is a node's cgroup, relative to a hierarchy's root: its
// agent, containerd, shims and pods (the kubelet's cgroup root) live there.
func nodeCgroup(node string) string { return filepath.Join("/capstan", node) }

// nodeCgroupDir is a node's cgroup in the v2 hierarchy.
func nodeCgroupDir(node string) (string, error) {
	root, err := cgroup2.Root()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, nodeCgroup(node)), nil
}

// cgroupFD opens (making it if needed) a cgroup of the v2 hierarchy, to
// start a process in.
func cgroupFD(rel string) (int, error) {
	root, err := cgroup2.Root()
	if err != nil {
		return 0, err
	}
	dir := filepath.Join(root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	fd, err := syscall.Open(dir, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	return fd, nil
}

// stop ends a process with SIGTERM, then SIGKILL after 15 s.
func (c *Config) stop(name string) {
	pid := c.running(name)
	if pid == 0 {
		os.Remove(c.pidFile(name))
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 150 && c.running(name) != 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	os.Remove(c.pidFile(name))
}

// waitFor polls check until it passes, failing early with the end of its
// log when one of procs is no longer running.
func (c *Config) waitFor(ctx context.Context, timeout time.Duration, procs []string, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		for _, p := range procs {
			if c.running(p) == 0 {
				return fmt.Errorf("%s exited (log %s):\n%s", p, c.logFile(p), tailFile(c.logFile(p), 15))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
