package logs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/runtime/v2/logging"
	"github.com/containerd/containerd/v2/pkg/cio"
)

// drainGrace is how long a driver told to stop still copies what the
// container wrote before it stopped.
const drainGrace = 2 * time.Second

// Driver copies a container's output into its log file.
type Driver struct {
	// Path of the log file; it is appended to, and created with its
	// directory if needed.
	Path string
	// Stdout and Stderr are the container's streams; either may be nil.
	Stdout, Stderr io.Reader
	// Ready, if set, is called once the file is open.
	Ready func() error
	// Now stamps entries; nil means time.Now.
	Now func() time.Time
}

// Run copies until both streams end, or until ctx ends and what is left
// in them has been copied (for at most a couple of seconds).
func (d Driver) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(d.Path), 0o755); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	f, err := os.OpenFile(d.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	if d.Ready != nil {
		if err := d.Ready(); err != nil {
			return fmt.Errorf("signal ready: %w", err)
		}
	}
	now := d.Now
	if now == nil {
		now = time.Now
	}
	w := NewWriter(f, now)
	errc := make(chan error, 2)
	n := 0
	for _, s := range []struct {
		name Stream
		r    io.Reader
	}{{Stdout, d.Stdout}, {Stderr, d.Stderr}} {
		if s.r == nil {
			continue
		}
		n++
		go func() {
			if err := w.Copy(s.name, s.r); err != nil {
				errc <- fmt.Errorf("copy %s: %w", s.name, err)
				return
			}
			errc <- nil
		}()
	}
	var errs []error
	var grace <-chan time.Time
	done := ctx.Done()
	for n > 0 {
		select {
		case err := <-errc:
			n--
			errs = append(errs, err)
		case <-done:
			done = nil
			grace = time.After(drainGrace)
		case <-grace:
			// Told to stop and the streams have not ended: something
			// else holds them open. What was written is in the file.
			return errors.Join(errs...)
		}
	}
	return errors.Join(errs...)
}

// DriverMain is the logging binary that containerd's shim runs for a
// container created with IOCreator: args are those after the command name,
// that is the log file's path. The container's stdout and stderr are on
// fds 3 and 4 and readiness is reported on fd 5 (containerd's logging.Run).
// It returns only an error in args: logging.Run exits the process once
// the streams end or the shim sends SIGTERM.
func DriverMain(args []string) error {
	if len(args) != 1 || !filepath.IsAbs(args[0]) {
		return fmt.Errorf("logdriver: want one argument, the absolute path of the log file, got %q", args)
	}
	path := args[0]
	logging.Run(func(ctx context.Context, cfg *logging.Config, ready func() error) error {
		return Driver{Path: path, Stdout: cfg.Stdout, Stderr: cfg.Stderr, Ready: ready, Now: time.Now}.Run(ctx)
	})
	return nil
}

// IOCreator returns the containerd IO of a container whose output goes to
// the log file at path through the logging binary: the shim runs
// `binary command path` (binary must be absolute), whose command should
// call DriverMain([]string{path}). The container gets no stdin.
func IOCreator(binary, command, path string) cio.Creator {
	// The shim turns the URI's query into argv from a map, in no fixed
	// order; a single key keeps `command path` together.
	return cio.BinaryIO(binary, map[string]string{command: path})
}

// TerminalIOCreator is IOCreator for a container with a terminal, whose
// output is all on stdout.
func TerminalIOCreator(binary, command, path string) cio.Creator {
	return cio.TerminalBinaryIO(binary, map[string]string{command: path})
}
