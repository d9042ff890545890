package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/capstan-net/capstan/internal/ocilayout"
)

// fakeEcho stands in for capstan-echo so the unit test needs no go build.
func fakeEcho(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "capstan-echo")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho fake\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// readTar returns a tar's regular files' contents and every entry's header, by
// name, and the entry names in archive order.
func readTar(t *testing.T, r io.Reader) (files map[string][]byte, headers map[string]*tar.Header, order []string) {
	t.Helper()
	files = map[string][]byte{}
	headers = map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, headers, order
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		if _, dup := headers[h.Name]; dup {
			t.Errorf("tar has %s twice", h.Name)
		}
		headers[h.Name] = h
		order = append(order, h.Name)
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read %s: %v", h.Name, err)
			}
			files[h.Name] = data
		}
	}
}

func blob(t *testing.T, files map[string][]byte, d digest.Digest) []byte {
	t.Helper()
	data, ok := files["blobs/sha256/"+d.Encoded()]
	if !ok {
		t.Fatalf("archive has no blob %s", d)
	}
	if got := digest.FromBytes(data); got != d {
		t.Fatalf("blob %s has digest %s", d, got)
	}
	return data
}

func decode(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
}

func TestBuild(t *testing.T) {
	echo := fakeEcho(t)
	var archive bytes.Buffer
	if err := Build(context.Background(), Options{Echo: echo}, &archive); err != nil {
		t.Fatal(err)
	}
	files, _, _ := readTar(t, bytes.NewReader(archive.Bytes()))

	var layout ocispec.ImageLayout
	decode(t, files["oci-layout"], &layout)
	if layout.Version != "1.0.0" {
		t.Errorf("oci-layout version %q", layout.Version)
	}
	var index ocispec.Index
	decode(t, files["index.json"], &index)
	if index.SchemaVersion != 2 || index.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("index schema %d media type %q", index.SchemaVersion, index.MediaType)
	}

	want := map[string]struct {
		entrypoint, cmd []string
	}{
		EchoImage:    {[]string{"/capstan-echo"}, []string{"serve"}},
		BusyboxImage: {nil, []string{"sh"}},
	}
	if len(index.Manifests) != len(want) {
		t.Fatalf("index has %d manifests, want %d", len(index.Manifests), len(want))
	}
	var layers []ocispec.Descriptor
	for _, m := range index.Manifests {
		ref := m.Annotations[ocispec.AnnotationRefName]
		if got := m.Annotations["io.containerd.image.name"]; got != ref {
			t.Errorf("manifest %s: io.containerd.image.name %q, ref.name %q", m.Digest, got, ref)
		}
		w, ok := want[ref]
		if !ok {
			t.Errorf("unexpected image %q", ref)
			continue
		}
		delete(want, ref)
		if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != runtime.GOARCH {
			t.Errorf("%s: platform %+v", ref, m.Platform)
		}
		var manifest ocispec.Manifest
		decode(t, blob(t, files, m.Digest), &manifest)
		if manifest.MediaType != ocispec.MediaTypeImageManifest || m.MediaType != manifest.MediaType {
			t.Errorf("%s: manifest media type %q, descriptor %q", ref, manifest.MediaType, m.MediaType)
		}
		var config ocispec.Image
		decode(t, blob(t, files, manifest.Config.Digest), &config)
		if config.OS != "linux" || config.Architecture != runtime.GOARCH {
			t.Errorf("%s: config platform %s/%s", ref, config.OS, config.Architecture)
		}
		if !slices.Equal(config.Config.Entrypoint, w.entrypoint) || !slices.Equal(config.Config.Cmd, w.cmd) {
			t.Errorf("%s: entrypoint %q cmd %q, want %q %q", ref, config.Config.Entrypoint, config.Config.Cmd, w.entrypoint, w.cmd)
		}
		if config.Config.WorkingDir != "/" || len(config.Config.Env) != 1 || !strings.HasPrefix(config.Config.Env[0], "PATH=") {
			t.Errorf("%s: workdir %q env %q", ref, config.Config.WorkingDir, config.Config.Env)
		}
		if len(manifest.Layers) != 1 || len(config.RootFS.DiffIDs) != 1 {
			t.Fatalf("%s: %d layers, %d diff_ids, want 1", ref, len(manifest.Layers), len(config.RootFS.DiffIDs))
		}
		l := manifest.Layers[0]
		if l.MediaType != ocispec.MediaTypeImageLayerGzip {
			t.Errorf("%s: layer media type %q", ref, l.MediaType)
		}
		zr, err := gzip.NewReader(bytes.NewReader(blob(t, files, l.Digest)))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		if got := digest.FromBytes(raw); got != config.RootFS.DiffIDs[0] {
			t.Errorf("%s: diff_id %s, uncompressed layer is %s", ref, config.RootFS.DiffIDs[0], got)
		}
		layers = append(layers, l)
	}
	if len(want) != 0 {
		t.Errorf("missing images %v", want)
	}
	if len(layers) == 2 && layers[0].Digest != layers[1].Digest {
		t.Errorf("images do not share their layer: %s, %s", layers[0].Digest, layers[1].Digest)
	}
	// layer + 2 configs + 2 manifests
	if n := len(files) - 2; n != 5 {
		t.Errorf("archive has %d blobs, want 5", n)
	}
	checkLayer(t, files, layers[0], echo)
}

func checkLayer(t *testing.T, files map[string][]byte, l ocispec.Descriptor, echoPath string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(blob(t, files, l.Digest)))
	if err != nil {
		t.Fatal(err)
	}
	lfiles, headers, _ := readTar(t, zr)
	busybox, err := os.ReadFile(DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}
	echo, err := os.ReadFile(echoPath)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"bin/busybox":  busybox,
		"capstan-echo": echo,
		"etc/passwd":   []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
		"etc/group":    []byte("root:x:0:\nnobody:x:65534:\n"),
	} {
		if !bytes.Equal(lfiles[name], data) {
			t.Errorf("layer %s differs from what was put in (%d bytes, want %d)", name, len(lfiles[name]), len(data))
		}
	}
	for _, name := range []string{"bin/busybox", "capstan-echo"} {
		if h := headers[name]; h == nil || h.Mode != 0o755 {
			t.Errorf("layer %s: header %+v, want mode 0755", name, h)
		}
	}
	for _, applet := range []string{"sh", "ls", "cat", "sleep", "echo", "wget", "nc", "ps", "id", "hostname"} {
		h := headers["bin/"+applet]
		if h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("layer bin/%s: %+v, want a symlink to busybox", applet, h)
		}
	}
	if h := headers["tmp/"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != 0o1777 {
		t.Errorf("layer tmp/: %+v, want a directory with mode 1777", h)
	}
	for _, name := range []string{"etc/hostname", "etc/hosts", "etc/resolv.conf", "bin/busybox/"} {
		if _, ok := headers[name]; ok {
			t.Errorf("layer has %s", name)
		}
	}
	for name, h := range headers {
		if !h.ModTime.Equal(ocilayout.Epoch()) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("layer %s: mtime %s uid %d gid %d", name, h.ModTime, h.Uid, h.Gid)
		}
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	echo := fakeEcho(t)
	var a, b bytes.Buffer
	if err := Build(context.Background(), Options{Echo: echo}, &a); err != nil {
		t.Fatal(err)
	}
	if err := Build(context.Background(), Options{Echo: echo}, &b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two builds from the same inputs differ")
	}
}

func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "images.tar")
	if err := WriteFile(context.Background(), Options{Echo: fakeEcho(t)}, path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files, _, order := readTar(t, f)
	if _, ok := files["index.json"]; !ok || order[0] != "oci-layout" {
		t.Errorf("archive entries %q", order)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("output dir holds %d entries, want only the archive", len(entries))
	}
}

func TestBusyboxErrors(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "busybox")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The Go test binary is a dynamically linked ELF only with cgo; use the
	// system's sh, which every distribution links dynamically.
	dynamic, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(dir, "missing"), notELF, dynamic} {
		err := Build(context.Background(), Options{Busybox: path, Echo: fakeEcho(t)}, io.Discard)
		if !errors.Is(err, ErrBusybox) || !strings.Contains(err.Error(), "install busybox-static") {
			t.Errorf("Build with busybox %s: %v, want ErrBusybox", path, err)
		}
	}
}
