package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// removeContainers kills and deletes every container of a node's
// containerd namespace, its images (and so content and snapshots), then
// the namespace.
func removeContainers(ctx context.Context, socket, ns string) error {
	if _, err := os.Stat(socket); err != nil {
		return nil // no containerd, nothing of ours in it
	}
	c, err := client.New(socket, client.WithTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return err
	}
	found := false
	for _, n := range nss {
		found = found || n == ns
	}
	if !found {
		return nil
	}
	ctx = namespaces.WithNamespace(ctx, ns)
	var errs []error
	cs, err := c.Containers(ctx)
	if err != nil {
		return err
	}
	for _, ctr := range cs {
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
		return err
	}
	for i, img := range imgs {
		var opts []images.DeleteOpt
		if i == len(imgs)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		if err := c.ImageService().Delete(ctx, img.Name, opts...); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	var nerr error
	for range 50 {
		if nerr = c.NamespaceService().Delete(ctx, ns); nerr == nil || errdefs.IsNotFound(nerr) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("delete containerd namespace %s: %w", ns, nerr)
}
