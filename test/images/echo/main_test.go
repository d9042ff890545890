package main

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test run this binary as capstan-echo: with CAPSTAN_ECHO_MAIN set
// the test binary is the command.
func TestMain(m *testing.M) {
	if os.Getenv("CAPSTAN_ECHO_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

func command(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "CAPSTAN_ECHO_MAIN=1")
	return cmd
}

func TestServeExitsZeroOnSIGTERM(t *testing.T) {
	cmd := command(t, "serve", "--http-port", "0", "--tcp-port", "0", "--udp-port", "0", "--perf-port", "0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		done <- cmd.Wait()
	}()
	// The first line is printed once the signal handler is in place.
	select {
	case l := <-lines:
		if !strings.HasPrefix(l, "serving as ") {
			t.Fatalf("first line %q, want serving as ...", l)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("serve printed nothing")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("serve did not exit on SIGTERM")
	}
}

func TestCrashExitCode(t *testing.T) {
	out, err := command(t, "crash", "--code", "42").Output()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 42 {
		t.Fatalf("crash --code 42: %v, want exit status 42", err)
	}
	if string(out) != "crashing with code 42 after 0s\n" {
		t.Errorf("crash printed %q", out)
	}
}
