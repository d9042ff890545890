// Command capstan-pause is the pod sandbox ("pause") container's process: it
// holds the pod's namespaces open by sleeping until it is told to stop.
//
// When a pod shares its PID namespace (shareProcessNamespace), it is PID 1
// there, so orphaned processes of the pod's containers become its children:
// it reaps them, or they would stay zombies. SIGINT and SIGTERM end it with
// status 0; `capstan-pause -v` prints its version. The node agent builds the
// sandbox image from it, so it must be static:
//
//	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/capstan-pause ./cmd/capstan-pause
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

func main() {
	// Other arguments are ignored, as upstream's pause does.
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println(version())
		return
	}
	// Separate channels, so a burst of SIGCHLD cannot crowd out SIGTERM.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, unix.SIGINT, unix.SIGTERM)
	child := make(chan os.Signal, 1)
	signal.Notify(child, unix.SIGCHLD)
	// Warned only now, so whoever reads it knows SIGTERM is handled.
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "capstan-pause: warning: not PID 1, so orphans are not reaped here")
	}
	// Children may have exited before SIGCHLD was caught.
	reap()
	for {
		select {
		case sig := <-stop:
			fmt.Printf("Shutting down, got signal: %v\n", sig)
			return
		case <-child:
			reap()
		}
	}
}

// reap waits for every exited child; signals coalesce, so one SIGCHLD may
// stand for several.
func reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if pid <= 0 || err != nil { // no exited child left (0), or no child at all (ECHILD)
			return
		}
	}
}

// version is the line `-v` prints.
func version() string {
	v := "(unknown)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
	}
	return fmt.Sprintf("capstan-pause %s %s/%s %s", v, runtime.GOOS, runtime.GOARCH, runtime.Version())
}
