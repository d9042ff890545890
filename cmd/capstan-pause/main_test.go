package main

import (
	"bufio"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// build builds capstan-pause the way the node agent's image needs it.
func build(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "capstan-pause")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, msg)
	}
	return out
}

func TestStatic(t *testing.T) {
	f, err := elf.Open(build(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("capstan-pause is dynamically linked")
		}
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(build(t), "-v").Output()
	if err != nil {
		t.Fatalf("-v: %v", err)
	}
	if !strings.HasPrefix(string(out), "capstan-pause ") || strings.Count(string(out), "\n") != 1 {
		t.Errorf("-v printed %q, want one capstan-pause line", out)
	}
}

func TestStopSignals(t *testing.T) {
	bin := build(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(bin)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Not PID 1 here, so it warns, once its signal handlers are in place.
		if _, err := bufio.NewReader(stderr).ReadString('\n'); err != nil {
			t.Fatalf("read warning: %v", err)
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		if err := wait(t, cmd); err != nil {
			t.Errorf("after %v: %v, want exit status 0", sig, err)
		}
	}
}

// TestReapsAsPID1 starts capstan-pause as PID 1 of a new PID namespace with
// an orphaned child inherited from the shell it replaces, as a pod's
// containers' orphans become its children, and checks that once the child
// exits it is reaped rather than left a zombie.
func TestReapsAsPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a new PID namespace needs root")
	}
	bin := build(t)
	// The subshell exits at once, so sleep is reparented to the namespace's
	// PID 1, the shell, which then becomes capstan-pause.
	cmd := exec.Command("/bin/sh", "-c", `(sleep 1 &); exec "$0"`, bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer cmd.Process.Kill()

	sawChild := false
	deadline := time.Now().Add(10 * time.Second)
	for {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		kids := children(t, pid)
		if exe == bin && len(kids) > 0 {
			sawChild = true
		}
		if exe == bin && sawChild && len(kids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: exe %q, saw child %v, children now %v (zombies are not reaped?)", exe, sawChild, kids)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, cmd); err != nil {
		t.Errorf("after SIGTERM as PID 1: %v, want exit status 0", err)
	}
}

// children returns the PIDs of pid's children, zombies included, from each
// of its threads.
func children(t *testing.T, pid int) []string {
	t.Helper()
	tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no /proc/%d/task/*/children: %v", pid, err)
	}
	var out []string
	for _, f := range tasks {
		data, err := os.ReadFile(f)
		if err != nil && !errors.Is(err, os.ErrNotExist) { // threads come and go
			t.Fatal(err)
		}
		out = append(out, strings.Fields(string(data))...)
	}
	return out
}

func wait(t *testing.T, cmd *exec.Cmd) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("capstan-pause did not exit")
		return nil
	}
}
