package images

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"log/slog"
	"os"
	"slices"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/capstan-net/capstan/internal/ocilayout"
)

// PauseName is the pause binary's file name, installed beside the agent's.
const PauseName = "capstan-pause"

// The CRI plugin's image labels (internal/cri/labels in containerd, which
// cannot be imported): it manages images labelled managed, and its image
// garbage collection, like the kubelet's, leaves pinned images alone.
const (
	labelCRIImage  = "io.cri-containerd.image"
	labelCRIPinned = "io.cri-containerd.pinned"
)

func sandboxLabels() map[string]string {
	return map[string]string{labelCRIImage: "managed", labelCRIPinned: "pinned"}
}

// EnsureSandbox makes sure namespace has the sandbox image ref, unpacked
// into the overlayfs snapshotter and labelled for CRI as managed and pinned.
// An image of that name already unpacked is kept (only its labels are
// completed); otherwise the image is built from the static pauseBinary
// (/pause, its entrypoint) and imported.
func EnsureSandbox(ctx context.Context, c *client.Client, namespace, ref, pauseBinary string, log *slog.Logger) error {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return fmt.Errorf("sandbox image %q: %w", ref, err)
	}
	// CRI looks images up by their normalized name.
	ref = named.String()
	ctx = namespaces.WithNamespace(ctx, namespace)
	present, err := sandboxPresent(ctx, c, ref)
	if err != nil {
		return err
	}
	if present {
		log.Info("sandbox image present", "image", ref, "namespace", namespace)
		return labelSandbox(ctx, c, ref)
	}
	pause, err := readPause(pauseBinary)
	if err != nil {
		return err
	}
	archive, err := sandboxArchive(ref, pause)
	if err != nil {
		return err
	}
	names, err := importArchive(ctx, c, namespace, bytes.NewReader(archive), "sandbox image "+ref, log,
		client.WithImageLabels(sandboxLabels()))
	if err != nil {
		return err
	}
	if !slices.Contains(names, ref) {
		return fmt.Errorf("import sandbox image %s: got %q", ref, names)
	}
	return nil
}

// sandboxPresent tells whether ref is there and unpacked; an image whose
// content is gone counts as absent, so it is imported again.
func sandboxPresent(ctx context.Context, c *client.Client, ref string) (bool, error) {
	img, err := c.GetImage(ctx, ref)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get sandbox image %s: %w", ref, err)
	}
	ok, err := img.IsUnpacked(ctx, Snapshotter)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check sandbox image %s: %w", ref, err)
	}
	return ok, nil
}

// labelSandbox adds the CRI labels an existing image lacks.
func labelSandbox(ctx context.Context, c *client.Client, ref string) error {
	is := c.ImageService()
	img, err := is.Get(ctx, ref)
	if err != nil {
		return fmt.Errorf("get sandbox image %s: %w", ref, err)
	}
	var paths []string
	for k, v := range sandboxLabels() {
		if img.Labels[k] != v {
			if img.Labels == nil {
				img.Labels = map[string]string{}
			}
			img.Labels[k] = v
			paths = append(paths, "labels."+k)
		}
	}
	if len(paths) == 0 {
		return nil
	}
	if _, err := is.Update(ctx, img, paths...); err != nil {
		return fmt.Errorf("label sandbox image %s: %w", ref, err)
	}
	return nil
}

// readPause reads the pause binary, which must be static: the image has
// nothing else in it.
func readPause(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pause binary: %w", err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("pause binary %s: %w", path, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("pause binary %s is dynamically linked (build it with CGO_ENABLED=0)", path)
		}
	}
	return data, nil
}

// sandboxArchive is an image-layout archive of one image, ref, whose only
// file is /pause, its entrypoint. It runs as root, as upstream's does.
func sandboxArchive(ref string, pause []byte) ([]byte, error) {
	l, err := ocilayout.NewLayer(ocilayout.File("pause", 0o755, pause))
	if err != nil {
		return nil, err
	}
	var a ocilayout.Archive
	if _, err := a.Add(ocilayout.Image{
		Ref:       ref,
		Config:    ocispec.ImageConfig{Entrypoint: []string{"/pause"}, WorkingDir: "/"},
		Layers:    []ocilayout.Layer{l},
		CreatedBy: "capstan kubelet/images: " + PauseName,
	}); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := a.Write(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
