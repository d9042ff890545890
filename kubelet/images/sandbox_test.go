package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/plugins/content/local"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

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

func TestSandboxArchive(t *testing.T) {
	pause := []byte("\x7fELF pretend pause")
	data, err := sandboxArchive(testSandboxImage, pause)
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
	if m.Annotations["io.containerd.image.name"] != testSandboxImage || m.Annotations[ocispec.AnnotationRefName] != testSandboxImage {
		t.Errorf("manifest annotations %v, want both names %s", m.Annotations, testSandboxImage)
	}
	if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != runtime.GOARCH {
		t.Errorf("platform %+v", m.Platform)
	}
	var manifest ocispec.Manifest
	jsonBlob(t, files, m.Digest, &manifest)
	var config ocispec.Image
	jsonBlob(t, files, manifest.Config.Digest, &config)
	if !slices.Equal(config.Config.Entrypoint, []string{"/pause"}) || config.Config.Cmd != nil || config.Config.User != "" {
		t.Errorf("config entrypoint %q cmd %q user %q, want [/pause], none, root", config.Config.Entrypoint, config.Config.Cmd, config.Config.User)
	}
	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(manifest.Layers))
	}
	zr, err := gzip.NewReader(bytes.NewReader(files["blobs/sha256/"+manifest.Layers[0].Digest.Encoded()]))
	if err != nil {
		t.Fatal(err)
	}
	headers, layer := tarFiles(t, zr)
	if len(headers) != 1 || headers[0].Name != "pause" || headers[0].Typeflag != tar.TypeReg || headers[0].Mode != 0o755 {
		t.Fatalf("layer entries %+v, want only pause, mode 0755", headers)
	}
	if !bytes.Equal(layer["pause"], pause) {
		t.Errorf("layer's pause is %q, want %q", layer["pause"], pause)
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

func TestReadPause(t *testing.T) {
	if _, err := readPause(imagebuild.DefaultBusybox); err != nil {
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
		if _, err := readPause(p); err == nil {
			t.Errorf("readPause(%s) succeeded", p)
		}
	}
}

const testSandboxImage = "registry.k8s.io/pause:3.10.2"
