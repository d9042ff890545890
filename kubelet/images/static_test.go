package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/plugins/content/local"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/capstan-net/capstan/internal/ctrdtest"
	"github.com/capstan-net/capstan/test/images/imagebuild"
)

// tarFiles returns a tar's headers and regular files' contents, in order.
func tarFiles(t *testing.T, r io.Reader) ([]*tar.Header, map[string][]byte) {
	t.Helper()
	var headers []*tar.Header
	files := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return headers, files
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		headers = append(headers, h)
		files[h.Name] = data
	}
}

func jsonBlob(t *testing.T, files map[string][]byte, d digest.Digest, v any) {
	t.Helper()
	data, ok := files["blobs/sha256/"+d.Encoded()]
	if !ok {
		t.Fatalf("archive has no blob %s", d)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", d, err)
	}
}

// TestStaticArchive checks the archive of each image a node makes: one
// file, its entrypoint, named as upstream's images name it.
func TestStaticArchive(t *testing.T) {
	for _, img := range []Static{Sandbox(testSandboxImage, "/bin/capstan-pause"), CoreDNS(testCoreDNSImage, "/bin/coredns")} {
		t.Run(img.File, func(t *testing.T) { checkStaticArchive(t, img) })
	}
}

func checkStaticArchive(t *testing.T, img Static) {
	prog := []byte("\x7fELF pretend " + img.File)
	data, err := staticArchive(img.Ref, img.File, prog)
	if err != nil {
		t.Fatal(err)
	}
	_, files := tarFiles(t, bytes.NewReader(data))
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	m := index.Manifests[0]
	// containerd's importer names the image by io.containerd.image.name.
	if m.Annotations["io.containerd.image.name"] != img.Ref || m.Annotations[ocispec.AnnotationRefName] != img.Ref {
		t.Errorf("manifest annotations %v, want both names %s", m.Annotations, img.Ref)
	}
	if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != runtime.GOARCH {
		t.Errorf("platform %+v", m.Platform)
	}
	var manifest ocispec.Manifest
	jsonBlob(t, files, m.Digest, &manifest)
	var config ocispec.Image
	jsonBlob(t, files, manifest.Config.Digest, &config)
	if !slices.Equal(config.Config.Entrypoint, []string{"/" + img.File}) || config.Config.Cmd != nil || config.Config.User != "" {
		t.Errorf("config entrypoint %q cmd %q user %q, want [/%s], none, root", config.Config.Entrypoint, config.Config.Cmd, config.Config.User, img.File)
	}
	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(manifest.Layers))
	}
	zr, err := gzip.NewReader(bytes.NewReader(files["blobs/sha256/"+manifest.Layers[0].Digest.Encoded()]))
	if err != nil {
		t.Fatal(err)
	}
	headers, layer := tarFiles(t, zr)
	if len(headers) != 1 || headers[0].Name != img.File || headers[0].Typeflag != tar.TypeReg || headers[0].Mode != 0o755 {
		t.Fatalf("layer entries %+v, want only %s, mode 0755", headers, img.File)
	}
	if !bytes.Equal(layer[img.File], prog) {
		t.Errorf("layer's %s is %q, want %q", img.File, layer[img.File], prog)
	}

	// containerd's own archive reader accepts it (digests checked as stored).
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	desc, err := archive.ImportIndex(t.Context(), store, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("containerd import: %v", err)
	}
	for _, d := range []digest.Digest{desc.Digest, m.Digest, manifest.Config.Digest, manifest.Layers[0].Digest} {
		if _, err := store.Info(t.Context(), d); err != nil {
			t.Errorf("blob %s after containerd import: %v", d, err)
		}
	}
}

func TestReadStatic(t *testing.T) {
	if _, err := readStatic(imagebuild.DefaultBusybox); err != nil {
		t.Errorf("static %s: %v", imagebuild.DefaultBusybox, err)
	}
	notELF := filepath.Join(t.TempDir(), "pause")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Distributions link sh dynamically.
	dynamic, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{notELF, dynamic, filepath.Join(t.TempDir(), "missing")} {
		if _, err := readStatic(p); err == nil {
			t.Errorf("readStatic(%s) succeeded", p)
		}
	}
}

const (
	testSandboxImage = "registry.k8s.io/pause:3.10.2"
	testCoreDNSImage = "registry.k8s.io/coredns/coredns:v1.15.0"
)

// EnsureStatic on a real containerd: the image is made, labelled for CRI,
// runs its program, and is kept (its labels completed) on the next start.
func TestEnsureStatic(t *testing.T) {
	c := ctrdtest.Client(t)
	ns := ctrdtest.Namespace(t, c)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(t.Context(), ns), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// busybox-static stands in for a program of ours: one static binary.
	img := Static{Ref: "example.test/static/busybox:1", Binary: imagebuild.DefaultBusybox, File: "busybox"}
	if err := EnsureStatic(ctx, c, ns, img, log); err != nil {
		t.Fatal(err)
	}
	got, err := c.ImageService().Get(ctx, img.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels[labelCRIImage] != "managed" || got.Labels[labelCRIPinned] != "pinned" {
		t.Errorf("labels %v, want CRI's managed and pinned", got.Labels)
	}
	if out, errOut, code := run(t, ctx, c, img.Ref, "static-echo", oci.WithProcessArgs("/busybox", "echo", "hi")); code != 0 || out != "hi\n" {
		t.Errorf("/busybox echo hi: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	// A restart finds it; a label lost meanwhile comes back, the image stays.
	delete(got.Labels, labelCRIPinned)
	if _, err := c.ImageService().Update(ctx, got, "labels."+labelCRIPinned); err != nil {
		t.Fatal(err)
	}
	img.Binary = filepath.Join(t.TempDir(), "gone") // not read again
	if err := EnsureStatic(ctx, c, ns, img, log); err != nil {
		t.Fatal(err)
	}
	again, err := c.ImageService().Get(ctx, img.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if again.Target.Digest != got.Target.Digest || again.Labels[labelCRIPinned] != "pinned" {
		t.Errorf("after a second EnsureStatic: %s %v, want %s, pinned", again.Target.Digest, again.Labels, got.Target.Digest)
	}
}
