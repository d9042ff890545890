package ocilayout

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// entry is what a test reads back of a tar entry.
type entry struct {
	header *tar.Header
	data   []byte
}

// readTar returns a tar's entries in order.
func readTar(t *testing.T, r io.Reader) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}
		out = append(out, entry{h, data})
	}
}

// files returns a tar's regular files by name.
func files(t *testing.T, archive []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, e := range readTar(t, bytes.NewReader(archive)) {
		if e.header.Typeflag == tar.TypeReg {
			out[e.header.Name] = e.data
		}
	}
	return out
}

func blob(t *testing.T, files map[string][]byte, d digest.Digest) []byte {
	t.Helper()
	data, ok := files["blobs/sha256/"+d.Encoded()]
	if !ok {
		t.Fatalf("archive has no blob %s", d)
	}
	return data
}

func decode(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
}

func TestLayerRoundTrip(t *testing.T) {
	in := []Entry{
		Dir("bin", 0o755),
		File("bin/tool", 0o755, []byte("\x7fELF tool")),
		Symlink("bin/alias", "tool"),
		Dir("tmp", 0o1777),
		File("etc-file", 0o600, nil),
	}
	l, err := NewLayer(in...)
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(l.Blob); got != l.Digest {
		t.Errorf("Digest %s, blob is %s", l.Digest, got)
	}
	zr, err := gzip.NewReader(bytes.NewReader(l.Blob))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(raw); got != l.DiffID {
		t.Errorf("DiffID %s, uncompressed layer is %s", l.DiffID, got)
	}
	out := readTar(t, bytes.NewReader(raw))
	if len(out) != len(in) {
		t.Fatalf("layer has %d entries, want %d", len(out), len(in))
	}
	for i, e := range in {
		h := out[i].header
		name := e.Name
		if e.Type == tar.TypeDir {
			name += "/"
		}
		if h.Typeflag != e.Type || h.Name != name || h.Mode != e.Mode || h.Linkname != e.Linkname ||
			!bytes.Equal(out[i].data, e.Data) {
			t.Errorf("entry %d: got %q type %c mode %o link %q data %q, want %q type %c mode %o link %q data %q",
				i, h.Name, h.Typeflag, h.Mode, h.Linkname, out[i].data, name, e.Type, e.Mode, e.Linkname, e.Data)
		}
		if !h.ModTime.Equal(Epoch()) || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: mtime %s owner %d:%d (%q:%q), want epoch and root", h.Name, h.ModTime, h.Uid, h.Gid, h.Uname, h.Gname)
		}
	}
}

func TestLayerRejectsBadEntries(t *testing.T) {
	for _, e := range []Entry{
		File("", 0o644, nil),
		File("/etc/passwd", 0o644, nil),
		File("../escape", 0o644, nil),
		File("a/../../escape", 0o644, nil),
		Dir("bin/", 0o755),
		File("./x", 0o644, nil),
		{Type: tar.TypeLink, Name: "hard", Linkname: "x"},
	} {
		if _, err := NewLayer(e); err == nil {
			t.Errorf("NewLayer(%+v) succeeded", e)
		}
	}
}

// build makes an archive of two images sharing a layer, the second with an
// extra layer on top.
func build(t *testing.T) []byte {
	t.Helper()
	base, err := NewLayer(Dir("bin", 0o755), File("bin/app", 0o755, []byte("app")))
	if err != nil {
		t.Fatal(err)
	}
	top, err := NewLayer(File("data", 0o644, []byte("data")))
	if err != nil {
		t.Fatal(err)
	}
	var a Archive
	for _, img := range []Image{
		{Ref: "example.com/one:1", Config: ocispec.ImageConfig{Entrypoint: []string{"/bin/app"}}, Layers: []Layer{base}, CreatedBy: "test"},
		{Ref: "example.com/ns/two:2", Config: ocispec.ImageConfig{Cmd: []string{"x"}}, Layers: []Layer{base, top}, CreatedBy: "test"},
	} {
		if _, err := a.Add(img); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := a.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestArchive(t *testing.T) {
	archive := build(t)
	entries := readTar(t, bytes.NewReader(archive))
	var names, blobs []string
	for _, e := range entries {
		names = append(names, e.header.Name)
		if rest, ok := strings.CutPrefix(e.header.Name, "blobs/sha256/"); ok && rest != "" {
			blobs = append(blobs, rest)
			if got := digest.FromBytes(e.data).Encoded(); got != rest {
				t.Errorf("blob %s holds content with digest %s", rest, got)
			}
		}
		if !e.header.ModTime.Equal(Epoch()) {
			t.Errorf("%s: mtime %s", e.header.Name, e.header.ModTime)
		}
	}
	if len(names) < 4 || names[0] != "oci-layout" || names[1] != "blobs/" || names[2] != "blobs/sha256/" || names[len(names)-1] != "index.json" {
		t.Errorf("archive entries %q", names)
	}
	if !slices.IsSorted(blobs) {
		t.Errorf("blobs not in digest order: %q", blobs)
	}
	// 2 layers (the shared one once) + 2 configs + 2 manifests
	if len(blobs) != 6 {
		t.Errorf("archive has %d blobs, want 6", len(blobs))
	}

	f := files(t, archive)
	var layout ocispec.ImageLayout
	decode(t, f["oci-layout"], &layout)
	if layout.Version != ocispec.ImageLayoutVersion {
		t.Errorf("oci-layout version %q", layout.Version)
	}
	var index ocispec.Index
	decode(t, f["index.json"], &index)
	if index.SchemaVersion != 2 || index.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("index schema %d media type %q", index.SchemaVersion, index.MediaType)
	}
	want := []struct {
		ref    string
		layers int
	}{{"example.com/one:1", 1}, {"example.com/ns/two:2", 2}}
	if len(index.Manifests) != len(want) {
		t.Fatalf("index has %d manifests, want %d", len(index.Manifests), len(want))
	}
	for i, m := range index.Manifests {
		w := want[i]
		if m.Annotations[ocispec.AnnotationRefName] != w.ref || m.Annotations["io.containerd.image.name"] != w.ref {
			t.Errorf("manifest %d annotations %v, want both names %s", i, m.Annotations, w.ref)
		}
		if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != runtime.GOARCH {
			t.Errorf("%s: platform %+v", w.ref, m.Platform)
		}
		data := blob(t, f, m.Digest)
		if m.MediaType != ocispec.MediaTypeImageManifest || m.Size != int64(len(data)) {
			t.Errorf("%s: descriptor %+v, manifest is %d bytes", w.ref, m, len(data))
		}
		var manifest ocispec.Manifest
		decode(t, data, &manifest)
		var config ocispec.Image
		decode(t, blob(t, f, manifest.Config.Digest), &config)
		if config.OS != "linux" || config.Architecture != runtime.GOARCH || config.Created == nil || !config.Created.Equal(Epoch()) {
			t.Errorf("%s: config platform %s/%s created %v", w.ref, config.OS, config.Architecture, config.Created)
		}
		if len(manifest.Layers) != w.layers || len(config.RootFS.DiffIDs) != w.layers || len(config.History) != w.layers {
			t.Fatalf("%s: %d layers, %d diff_ids, %d history, want %d", w.ref, len(manifest.Layers), len(config.RootFS.DiffIDs), len(config.History), w.layers)
		}
		for j, l := range manifest.Layers {
			zr, err := gzip.NewReader(bytes.NewReader(blob(t, f, l.Digest)))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if got := digest.FromBytes(raw); got != config.RootFS.DiffIDs[j] || l.MediaType != ocispec.MediaTypeImageLayerGzip {
				t.Errorf("%s layer %d: %s diff_id %s, uncompressed is %s", w.ref, j, l.MediaType, config.RootFS.DiffIDs[j], got)
			}
		}
	}
}

func TestArchiveIsDeterministic(t *testing.T) {
	if a, b := build(t), build(t); !bytes.Equal(a, b) {
		t.Error("two archives from the same inputs differ")
	}
}

func TestArchiveErrors(t *testing.T) {
	l, err := NewLayer(File("x", 0o644, nil))
	if err != nil {
		t.Fatal(err)
	}
	var a Archive
	if _, err := a.Add(Image{Ref: "example.com/x:1", Layers: []Layer{l}}); err != nil {
		t.Fatal(err)
	}
	for _, img := range []Image{
		{Ref: "example.com/x:1", Layers: []Layer{l}}, // twice
		{Ref: "", Layers: []Layer{l}},
		{Ref: "example.com/empty:1"},
	} {
		if _, err := a.Add(img); err == nil {
			t.Errorf("Add(%q with %d layers) succeeded", img.Ref, len(img.Layers))
		}
	}
}

func TestEmptyArchive(t *testing.T) {
	var buf bytes.Buffer
	if err := new(Archive).Write(&buf); err != nil {
		t.Fatal(err)
	}
	var index ocispec.Index
	decode(t, files(t, buf.Bytes())["index.json"], &index)
	if index.Manifests == nil || len(index.Manifests) != 0 {
		t.Errorf("empty archive's manifests %#v, want []", index.Manifests)
	}
}
