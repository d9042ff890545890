// Package ctrdtest gives tests a client of the project's containerd
// (scripts/containerd.sh) and a containerd namespace of their own, removed with
// everything in it when the test ends. Only tests import it.
package ctrdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// defaultSocket is where scripts/containerd.sh starts Capstan's containerd.
const defaultSocket = "/run/capstan/containerd/containerd.sock"

// Client connects to the project containerd. It fails, never skips: this
// test exists to run against a real containerd.
func Client(t testing.TB) *client.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it runs containers)")
	}
	socket := os.Getenv("CAPSTAN_CONTAINERD_SOCKET")
	if socket == "" {
		socket = defaultSocket
	}
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("no containerd at %s (%v): run scripts/containerd.sh start", socket, err)
	}
	c, err := client.New(socket, client.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatalf("connect to containerd at %s: %v (run scripts/containerd.sh start)", socket, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
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
