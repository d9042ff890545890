// Package images loads container images into a node's containerd from OCI
// image-layout archives, so pods can start without a registry.
package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Snapshotter is the snapshotter images are unpacked into.
const Snapshotter = "overlayfs"

// ErrNoImages means an archive names no image: its index.json manifests carry
// neither an io.containerd.image.name nor an org.opencontainers.image.ref.name
// annotation.
var ErrNoImages = errors.New("images: archive names no image")

// Import imports the OCI image-layout archive at path into namespace, unpacks
// each image into the overlayfs snapshotter and returns the image names, sorted.
// Images are named by the manifests' annotations in index.json. Importing the
// same archive again is cheap: blobs already stored are not written again, the
// images point at the same manifests, and layers already unpacked are not
// applied again.
func Import(ctx context.Context, c *client.Client, namespace, path string, log *slog.Logger) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open archive: %w", err)
	}
	defer f.Close()
	return importArchive(ctx, c, namespace, f, path, log)
}

// importArchive imports the archive read from r (named by source in errors)
// into namespace and unpacks its images; opts are passed to containerd's
// importer.
func importArchive(ctx context.Context, c *client.Client, namespace string, r io.Reader, source string, log *slog.Logger, opts ...client.ImportOpt) ([]string, error) {
	ctx = namespaces.WithNamespace(ctx, namespace)
	imgs, err := c.Import(ctx, r, opts...)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", source, err)
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoImages, source)
	}
	names := make([]string, 0, len(imgs))
	for _, img := range imgs {
		// Unpack even when the image's layers are already there (another image
		// may have unpacked a shared layer): it is cheap then, and it labels this
		// image's config so garbage collection keeps the snapshot for it.
		if err := client.NewImage(c, img).Unpack(ctx, Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack %s: %w", img.Name, err)
		}
		log.Info("imported image", "image", img.Name, "digest", img.Target.Digest, "namespace", namespace)
		names = append(names, img.Name)
	}
	slices.Sort(names)
	return names, nil
}
