// Package imagebuild writes Capstan's test images as one OCI image-layout archive,
// without a registry or a container engine.
//
// The archive (a tar of oci-layout, index.json and blobs/sha256/...) holds two
// images that share one gzip'd layer:
//
//	capstan.local/echo:1.0     entrypoint /capstan-echo, cmd serve
//	capstan.local/busybox:1.0  cmd sh
//
// The layer holds a static busybox in /bin with a symlink per applet,
// /capstan-echo (test/images/echo built with CGO_ENABLED=0), /etc/passwd and
// /etc/group with root and nobody (65534), /root and /tmp (1777). It has no
// /etc/hostname, /etc/hosts or /etc/resolv.conf: the runtime provides those.
//
// Each manifest in index.json is named twice: org.opencontainers.image.ref.name
// (the OCI key) and io.containerd.image.name, which containerd's importer
// prefers and uses untranslated, so both `ctr images import` (which otherwise
// prefixes or drops full references) and the agent's import name the images by
// their full reference. Every timestamp is fixed, so the same inputs give the
// same archive.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	_ "crypto/sha256" // digest.FromBytes
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The images' references.
const (
	EchoImage    = "capstan.local/echo:1.0"
	BusyboxImage = "capstan.local/busybox:1.0"
)

// EchoPackage is the Go package built into /capstan-echo.
const EchoPackage = "github.com/capstan-net/capstan/test/images/echo"

// DefaultBusybox is where Debian's busybox-static installs busybox.
const DefaultBusybox = "/bin/busybox"

// annotationContainerdName is containerd's image-name annotation
// (images.AnnotationImageName in github.com/containerd/containerd/v2/core/images),
// spelled out here so the builder does not pull in containerd.
const annotationContainerdName = "io.containerd.image.name"

// epoch is every file's and image's timestamp.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// envPath is the images' PATH.
const envPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ErrBusybox means the busybox binary is missing or unusable in a container.
var ErrBusybox = errors.New("imagebuild: no usable static busybox (install busybox-static)")

// Options are the inputs of Build.
type Options struct {
	// Busybox is a statically linked busybox; empty means DefaultBusybox.
	Busybox string
	// Echo is a prebuilt static capstan-echo for runtime.GOARCH; empty builds
	// EchoPackage with `go build` (the working directory must be inside the module).
	Echo string
	// Log receives progress; nil discards it.
	Log *slog.Logger
}

// WriteFile builds the archive into path, through a temporary file renamed into
// place, creating path's directory if needed.
func WriteFile(ctx context.Context, opts Options, path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create output dir: %w", err)
	}
	f, err := os.CreateTemp(dir, ".capstan-images-*.tar")
	if err != nil {
		return fmt.Errorf("create archive: %w", err)
	}
	defer os.Remove(f.Name())
	if err := Build(ctx, opts, f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("chmod archive: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rename archive: %w", err)
	}
	return nil
}

// Build writes the archive to w.
func Build(ctx context.Context, opts Options, w io.Writer) error {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bbPath := opts.Busybox
	if bbPath == "" {
		bbPath = DefaultBusybox
	}
	busybox, applets, err := readBusybox(ctx, bbPath)
	if err != nil {
		return err
	}
	echoPath := opts.Echo
	if echoPath == "" {
		tmp, err := os.MkdirTemp("", "capstan-echo-")
		if err != nil {
			return fmt.Errorf("build capstan-echo: %w", err)
		}
		defer os.RemoveAll(tmp)
		echoPath = filepath.Join(tmp, "capstan-echo")
		log.Info("building capstan-echo", "package", EchoPackage)
		if err := BuildEcho(ctx, echoPath); err != nil {
			return err
		}
	}
	echo, err := os.ReadFile(echoPath)
	if err != nil {
		return fmt.Errorf("read capstan-echo: %w", err)
	}

	layer, err := buildLayer(busybox, applets, echo)
	if err != nil {
		return err
	}
	log.Info("built layer", "applets", len(applets), "bytes", len(layer.gz), "digest", layer.digest)

	blobs := map[digest.Digest][]byte{layer.digest: layer.gz}
	var manifests []ocispec.Descriptor
	for _, img := range []struct {
		ref    string
		config ocispec.ImageConfig
	}{
		{EchoImage, ocispec.ImageConfig{
			Entrypoint: []string{"/capstan-echo"},
			Cmd:        []string{"serve"},
			ExposedPorts: map[string]struct{}{
				"8080/tcp": {}, "9000/tcp": {}, "9001/udp": {}, "5201/tcp": {},
			},
		}},
		{BusyboxImage, ocispec.ImageConfig{Cmd: []string{"sh"}}},
	} {
		desc, err := addImage(blobs, img.ref, img.config, layer)
		if err != nil {
			return err
		}
		manifests = append(manifests, desc)
		log.Info("built image", "ref", img.ref, "manifest", desc.Digest)
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: manifests,
	})
	if err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return fmt.Errorf("encode oci-layout: %w", err)
	}
	return writeLayout(w, layout, index, blobs)
}

// BuildEcho builds EchoPackage as a static binary for runtime.GOARCH into out.
func BuildEcho(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, EchoPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build capstan-echo: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// readBusybox reads a static busybox and the names of its applets.
func readBusybox(ctx context.Context, path string) ([]byte, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBusybox, err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrBusybox, path, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, nil, fmt.Errorf("%w: %s is dynamically linked", ErrBusybox, path)
		}
	}
	out, err := exec.CommandContext(ctx, path, "--list").Output()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s --list: %w", ErrBusybox, path, err)
	}
	var applets []string
	for name := range strings.FieldsSeq(string(out)) {
		if name == "busybox" || name == "." || name == ".." || strings.Contains(name, "/") {
			continue
		}
		applets = append(applets, name)
	}
	if !slices.Contains(applets, "sh") {
		return nil, nil, fmt.Errorf("%w: %s has no sh applet", ErrBusybox, path)
	}
	slices.Sort(applets)
	return data, applets, nil
}

type layer struct {
	gz     []byte
	digest digest.Digest // of gz
	diffID digest.Digest // of the uncompressed tar
}

// buildLayer makes the shared root filesystem layer.
func buildLayer(busybox []byte, applets []string, echo []byte) (layer, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	steps := []func() error{
		func() error { return dir("bin", 0o755) },
		func() error { return file("bin/busybox", 0o755, busybox) },
		func() error {
			for _, a := range applets {
				h := &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: epoch}
				if err := tw.WriteHeader(h); err != nil {
					return err
				}
			}
			return nil
		},
		func() error { return file("capstan-echo", 0o755, echo) },
		func() error { return dir("etc", 0o755) },
		func() error {
			return file("etc/group", 0o644, []byte("root:x:0:\nnobody:x:65534:\n"))
		},
		func() error {
			return file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
		},
		func() error { return dir("root", 0o700) },
		func() error { return dir("tmp", 0o1777) },
		tw.Close,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return layer{}, fmt.Errorf("write layer: %w", err)
		}
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return layer{}, fmt.Errorf("compress layer: %w", err)
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return layer{}, fmt.Errorf("compress layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return layer{}, fmt.Errorf("compress layer: %w", err)
	}
	return layer{
		gz:     gz.Bytes(),
		digest: digest.FromBytes(gz.Bytes()),
		diffID: digest.FromBytes(raw.Bytes()),
	}, nil
}

// addImage stores an image's config and manifest in blobs and returns the
// manifest's index entry.
func addImage(blobs map[digest.Digest][]byte, ref string, cfg ocispec.ImageConfig, l layer) (ocispec.Descriptor, error) {
	created := epoch
	platform := ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	cfg.Env = []string{envPath}
	cfg.WorkingDir = "/"
	config, err := json.Marshal(ocispec.Image{
		Created:  &created,
		Platform: platform,
		Config:   cfg,
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{l.diffID}},
		History: []ocispec.History{{
			Created:   &created,
			CreatedBy: "capstan test/images/imagebuild",
		}},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode config of %s: %w", ref, err)
	}
	configDesc := addBlob(blobs, ocispec.MediaTypeImageConfig, config)
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers: []ocispec.Descriptor{{
			MediaType: ocispec.MediaTypeImageLayerGzip,
			Digest:    l.digest,
			Size:      int64(len(l.gz)),
		}},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode manifest of %s: %w", ref, err)
	}
	desc := addBlob(blobs, ocispec.MediaTypeImageManifest, manifest)
	desc.Platform = &platform
	desc.Annotations = map[string]string{
		ocispec.AnnotationRefName: ref,
		annotationContainerdName:  ref,
	}
	return desc, nil
}

func addBlob(blobs map[digest.Digest][]byte, mediaType string, data []byte) ocispec.Descriptor {
	d := digest.FromBytes(data)
	blobs[d] = data
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

// writeLayout writes the image layout as a tar, blobs in digest order.
func writeLayout(w io.Writer, layout, index []byte, blobs map[digest.Digest][]byte) error {
	tw := tar.NewWriter(w)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: epoch})
	}
	if err := file(ocispec.ImageLayoutFile, layout); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	if err := dir(ocispec.ImageBlobsDir); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	if err := dir(ocispec.ImageBlobsDir + "/sha256"); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	digests := make([]digest.Digest, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	slices.Sort(digests)
	for _, d := range digests {
		name := ocispec.ImageBlobsDir + "/" + d.Algorithm().String() + "/" + d.Encoded()
		if err := file(name, blobs[d]); err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
	}
	if err := file(ocispec.ImageIndexFile, index); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}
