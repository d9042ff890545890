// Package ctrdtest gives tests a containerd of their own (the one make build
// puts in bin/, with the node agent's configuration, in a temporary
// directory) and a containerd namespace, removed with everything in it when
// the test ends. Only tests import it.
package ctrdtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/capstan-net/capstan/kubelet/containerd"
)

// Client starts a containerd for the test and connects to it. It fails,
// never skips: these tests exist to run against a real containerd. The
// binary is $CAPSTAN_CONTAINERD, else bin/containerd of the module.
func Client(t testing.TB) *client.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it runs containers)")
	}
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	// Short paths: containerd's sockets live under the state dir.
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &containerd.Config{
		Binary: bin, ShimDir: filepath.Dir(bin),
		Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "s"),
		CNIConfDir: filepath.Join(dir, "cni"), LogFile: filepath.Join(dir, "containerd.log"),
		Log: slog.New(slog.DiscardHandler),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cfg.Supervise(ctx, func() {}) }()
	t.Cleanup(func() {
		cancel()
		<-done
		exec.Command("umount", "-R", dir).Run()
		os.RemoveAll(dir)
		os.RemoveAll(containerd.ShimSocketDir(cfg.State))
		// Their parents go if no one else uses them.
		os.Remove(containerd.ShimSocketRoot)
		os.Remove(filepath.Dir(containerd.ShimSocketRoot))
	})
	if err := containerd.WaitReady(ctx, cfg.Socket(), 30*time.Second); err != nil {
		log, _ := os.ReadFile(cfg.LogFile)
		t.Fatalf("%v\n%s", err, log)
	}
	c, err := client.New(cfg.Socket(), client.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatalf("connect to containerd at %s: %v", cfg.Socket(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// binary finds the containerd to run.
func binary() (string, error) {
	if b := os.Getenv("CAPSTAN_CONTAINERD"); b != "" {
		return b, nil
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	b := filepath.Join(filepath.Dir(strings.TrimSpace(string(gomod))), "bin", "containerd")
	if _, err := os.Stat(b); err != nil {
		return "", fmt.Errorf("no containerd at %s: make build builds it (or set CAPSTAN_CONTAINERD)", b)
	}
	return b, nil
}

// Namespace names a containerd namespace after the test (and this process,
// so concurrent runs do not meet) and removes everything in it when the test
// ends.
func Namespace(t testing.TB, c *client.Client) string {
	t.Helper()
	name := strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-"))
	ns := fmt.Sprintf("capstan-%s-%d", strings.Trim(name, "-"), os.Getpid())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), time.Minute)
		defer cancel()
		if err := removeNamespace(ctx, c, ns); err != nil {
			t.Errorf("clean up containerd namespace %s: %v", ns, err)
		}
	})
	return ns
}

// removeNamespace deletes the containers, images, content and snapshots in ns,
// then ns itself.
func removeNamespace(ctx context.Context, c *client.Client, ns string) error {
	var errs []error
	ctrs, err := c.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, ctr := range ctrs {
		if task, err := ctr.Task(ctx, nil); err == nil {
			if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete task %s: %w", ctr.ID(), err))
			}
		}
		if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete container %s: %w", ctr.ID(), err))
		}
	}
	imgs, err := c.ImageService().List(ctx)
	if err != nil {
		return fmt.Errorf("list images: %w", err)
	}
	for i, img := range imgs {
		var opts []images.DeleteOpt
		if i == len(imgs)-1 {
			// Collect garbage once, after the last image: content and snapshots go.
			opts = append(opts, images.SynchronousDelete())
		}
		if err := c.ImageService().Delete(ctx, img.Name, opts...); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete image %s: %w", img.Name, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Garbage collection may still be finishing; retry briefly.
	var nerr error
	for range 50 {
		if nerr = c.NamespaceService().Delete(ctx, ns); nerr == nil || errdefs.IsNotFound(nerr) {
			removeCgroups(ns)
			// Containers made through the client (not CRI) keep runc's state
			// in its default root.
			os.RemoveAll(filepath.Join("/run/containerd/runc", ns))
			os.Remove("/run/containerd/runc")
			os.Remove("/run/containerd")
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("delete namespace: %w", nerr)
}

// removeCgroups removes the (empty) cgroup directories runc made for the
// namespace's containers (containerd's default path is /<namespace>/<id>).
func removeCgroups(ns string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", ns))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", ns))
	for _, d := range dirs {
		subs, _ := os.ReadDir(d)
		for _, s := range subs {
			if s.IsDir() {
				os.Remove(filepath.Join(d, s.Name()))
			}
		}
		os.Remove(d)
	}
}
