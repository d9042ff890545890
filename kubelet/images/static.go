package images

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/capstan-net/capstan/internal/ocilayout"
)

// The binaries a node's own images are made of, installed beside the agent's.
const (
	// PauseName is the pod sandbox's pause program.
	PauseName = "capstan-pause"
	// CoreDNSName is the upstream CoreDNS (tools/coredns), the cluster DNS add-on.
	CoreDNSName = "coredns"
)

// The CRI plugin's image labels (internal/cri/labels in containerd, which
// cannot be imported): it manages images labelled managed, and its image
// garbage collection, like the kubelet's, leaves pinned images alone.
const (
	labelCRIImage  = "io.cri-containerd.image"
	labelCRIPinned = "io.cri-containerd.pinned"
)

func criLabels() map[string]string {
	return map[string]string{labelCRIImage: "managed", labelCRIPinned: "pinned"}
}

// Static is an image whose only file is one statically linked program, its
// entrypoint, made on the node: there is no registry to pull it from.
type Static struct {
	// Ref is the reference pods name the image by.
	Ref string
	// Binary is the program's path on the node.
	Binary string
	// File is the program's name in the image's root, /File its entrypoint.
	File string
}

// Sandbox is the pod sandbox image ref made from the pause program, which
// is /pause as in upstream's image.
func Sandbox(ref, pauseBinary string) Static {
	return Static{Ref: ref, Binary: pauseBinary, File: "pause"}
}

// CoreDNS is the cluster DNS image ref made from the CoreDNS program,
// which is /coredns as in upstream's image.
func CoreDNS(ref, binary string) Static { return Static{Ref: ref, Binary: binary, File: "coredns"} }

// EnsureStatic makes sure namespace has img, unpacked into the overlayfs
// snapshotter and labelled for CRI as managed and pinned (a removed image
// could not come back). An image of that name already unpacked is kept
// (only its labels are completed); otherwise it is built from img.Binary
// and imported.
func EnsureStatic(ctx context.Context, c *client.Client, namespace string, img Static, log *slog.Logger) error {
	named, err := reference.ParseDockerRef(img.Ref)
	if err != nil {
		return fmt.Errorf("image %q: %w", img.Ref, err)
	}
	// CRI looks images up by their normalized name.
	ref := named.String()
	ctx = namespaces.WithNamespace(ctx, namespace)
	present, err := unpacked(ctx, c, ref)
	if err != nil {
		return err
	}
	if present {
		log.Info("image present", "image", ref, "namespace", namespace)
		return addCRILabels(ctx, c, ref)
	}
	prog, err := readStatic(img.Binary)
	if err != nil {
		return err
	}
	archive, err := staticArchive(ref, img.File, prog)
	if err != nil {
		return err
	}
	names, err := importArchive(ctx, c, namespace, bytes.NewReader(archive), "image "+ref, log,
		client.WithImageLabels(criLabels()))
	if err != nil {
		return err
	}
	if !slices.Contains(names, ref) {
		return fmt.Errorf("import image %s: got %q", ref, names)
	}
	return nil
}

// unpacked tells whether ref is there and unpacked; an image whose content
// is gone counts as absent, so it is imported again.
func unpacked(ctx context.Context, c *client.Client, ref string) (bool, error) {
	img, err := c.GetImage(ctx, ref)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get image %s: %w", ref, err)
	}
	ok, err := img.IsUnpacked(ctx, Snapshotter)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check image %s: %w", ref, err)
	}
	return ok, nil
}

// addCRILabels adds the CRI labels an existing image lacks.
func addCRILabels(ctx context.Context, c *client.Client, ref string) error {
	is := c.ImageService()
	img, err := is.Get(ctx, ref)
	if err != nil {
		return fmt.Errorf("get image %s: %w", ref, err)
	}
	var paths []string
	for k, v := range criLabels() {
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
		return fmt.Errorf("label image %s: %w", ref, err)
	}
	return nil
}

// readStatic reads a program, which must be statically linked: the image
// has nothing else in it.
func readStatic(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s binary: %w", filepath.Base(path), err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s binary %s: %w", filepath.Base(path), path, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s binary %s is dynamically linked (build it with CGO_ENABLED=0)", filepath.Base(path), path)
		}
	}
	return data, nil
}

// staticArchive is an image-layout archive of one image, ref, whose only
// file is /name, its entrypoint. It runs as root, as upstream's pause and
// CoreDNS images do. The layer is compressed for speed: it is made at
// the node's start, and CoreDNS weighs some 80 MB.
func staticArchive(ref, name string, prog []byte) ([]byte, error) {
	l, err := ocilayout.NewLayerLevel(gzip.BestSpeed, ocilayout.File(name, 0o755, prog))
	if err != nil {
		return nil, err
	}
	var a ocilayout.Archive
	if _, err := a.Add(ocilayout.Image{
		Ref:       ref,
		Config:    ocispec.ImageConfig{Entrypoint: []string{"/" + name}, WorkingDir: "/"},
		Layers:    []ocilayout.Layer{l},
		CreatedBy: "capstan kubelet/images: " + name,
	}); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := a.Write(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
