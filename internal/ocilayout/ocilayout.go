// Package ocilayout writes OCI image-layout archives (a tar of oci-layout,
// index.json and blobs/sha256/...) that containerd imports, without a registry
// or a container engine.
//
// Each manifest in index.json is named twice: org.opencontainers.image.ref.name
// (the OCI key) and io.containerd.image.name, which containerd's importer
// prefers and uses untranslated, so both `ctr images import` (which otherwise
// prefixes or drops full references) and containerd's client name the images
// by their full reference. Images are for linux/runtime.GOARCH. Every
// timestamp is Epoch, so the same inputs give the same bytes.
package ocilayout

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // digest.FromBytes
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// annotationContainerdName is containerd's image-name annotation
// (images.AnnotationImageName in github.com/containerd/containerd/v2/core/images),
// spelled out here so writing archives does not pull in containerd.
const annotationContainerdName = "io.containerd.image.name"

// Epoch is every file's and image's timestamp.
func Epoch() time.Time { return time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC) }

// Entry is one file system object of a layer.
type Entry struct {
	// Type is tar.TypeDir, tar.TypeReg or tar.TypeSymlink.
	Type byte
	// Name is the slash-separated path from the root, without a leading or
	// trailing slash.
	Name string
	Mode int64
	// Data is a regular file's content.
	Data []byte
	// Linkname is a symlink's target.
	Linkname string
}

// Dir is a directory entry.
func Dir(name string, mode int64) Entry {
	return Entry{Type: tar.TypeDir, Name: name, Mode: mode}
}

// File is a regular file entry.
func File(name string, mode int64, data []byte) Entry {
	return Entry{Type: tar.TypeReg, Name: name, Mode: mode, Data: data}
}

// Symlink is a symbolic link entry (mode 0777, as symlinks have).
func Symlink(name, target string) Entry {
	return Entry{Type: tar.TypeSymlink, Name: name, Mode: 0o777, Linkname: target}
}

// Layer is a gzip'd layer tar.
type Layer struct {
	Blob   []byte        // the gzip'd tar
	Digest digest.Digest // of Blob
	DiffID digest.Digest // of the uncompressed tar
}

// NewLayer writes entries, in order, as a layer owned by root, compressed
// as small as gzip makes it: for archives built once and copied about.
func NewLayer(entries ...Entry) (Layer, error) {
	return NewLayerLevel(gzip.BestCompression, entries...)
}

// NewLayerLevel is NewLayer at a gzip level (gzip.BestSpeed to
// gzip.BestCompression). Layers made where they are imported, at a node's
// start, favour speed: over a binary of 80 MB the best level takes about
// 8 s, the fastest about 1 s for a blob only 15% larger.
func NewLayerLevel(level int, entries ...Entry) (Layer, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, e := range entries {
		if err := writeEntry(tw, e); err != nil {
			return Layer{}, fmt.Errorf("write layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return Layer{}, fmt.Errorf("write layer: %w", err)
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, level)
	if err != nil {
		return Layer{}, fmt.Errorf("compress layer at level %d: %w", level, err)
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return Layer{}, fmt.Errorf("compress layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return Layer{}, fmt.Errorf("compress layer: %w", err)
	}
	return Layer{
		Blob:   gz.Bytes(),
		Digest: digest.FromBytes(gz.Bytes()),
		DiffID: digest.FromBytes(raw.Bytes()),
	}, nil
}

func writeEntry(tw *tar.Writer, e Entry) error {
	if e.Name == "" || path.IsAbs(e.Name) || path.Clean(e.Name) != e.Name ||
		e.Name == ".." || strings.HasPrefix(e.Name, "../") {
		return fmt.Errorf("bad entry name %q", e.Name)
	}
	h := &tar.Header{Typeflag: e.Type, Name: e.Name, Mode: e.Mode, ModTime: Epoch()}
	switch e.Type {
	case tar.TypeDir:
		h.Name += "/"
	case tar.TypeReg:
		h.Size = int64(len(e.Data))
	case tar.TypeSymlink:
		h.Linkname = e.Linkname
	default:
		return fmt.Errorf("%s: unsupported entry type %q", e.Name, e.Type)
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if e.Type == tar.TypeReg {
		_, err := tw.Write(e.Data)
		return err
	}
	return nil
}

// Image is one image of an archive.
type Image struct {
	// Ref is the full reference the image is imported as.
	Ref    string
	Config ocispec.ImageConfig
	// Layers are the image's layers, bottom first; images may share them.
	Layers []Layer
	// CreatedBy is each layer's history entry.
	CreatedBy string
}

// Archive collects images and writes them as an image layout. The zero value
// is empty and ready to use.
type Archive struct {
	blobs     map[digest.Digest][]byte
	manifests []ocispec.Descriptor
}

// Add stores img's layers, config and manifest and returns the manifest's
// index entry.
func (a *Archive) Add(img Image) (ocispec.Descriptor, error) {
	if img.Ref == "" {
		return ocispec.Descriptor{}, errors.New("image has no reference")
	}
	if len(img.Layers) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("image %s has no layers", img.Ref)
	}
	for _, m := range a.manifests {
		if m.Annotations[ocispec.AnnotationRefName] == img.Ref {
			return ocispec.Descriptor{}, fmt.Errorf("image %s added twice", img.Ref)
		}
	}
	created := Epoch()
	platform := ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	var layers []ocispec.Descriptor
	var diffIDs []digest.Digest
	var history []ocispec.History
	for _, l := range img.Layers {
		layers = append(layers, a.addBlob(ocispec.MediaTypeImageLayerGzip, l.Blob))
		diffIDs = append(diffIDs, l.DiffID)
		history = append(history, ocispec.History{Created: &created, CreatedBy: img.CreatedBy})
	}
	config, err := json.Marshal(ocispec.Image{
		Created:  &created,
		Platform: platform,
		Config:   img.Config,
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
		History:  history,
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode config of %s: %w", img.Ref, err)
	}
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    a.addBlob(ocispec.MediaTypeImageConfig, config),
		Layers:    layers,
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode manifest of %s: %w", img.Ref, err)
	}
	desc := a.addBlob(ocispec.MediaTypeImageManifest, manifest)
	desc.Platform = &platform
	desc.Annotations = map[string]string{
		ocispec.AnnotationRefName: img.Ref,
		annotationContainerdName:  img.Ref,
	}
	a.manifests = append(a.manifests, desc)
	return desc, nil
}

func (a *Archive) addBlob(mediaType string, data []byte) ocispec.Descriptor {
	if a.blobs == nil {
		a.blobs = map[digest.Digest][]byte{}
	}
	d := digest.FromBytes(data)
	a.blobs[d] = data
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

// Write writes the archive: oci-layout, the blobs in digest order, then
// index.json with the images in the order they were added.
func (a *Archive) Write(w io.Writer) error {
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return fmt.Errorf("encode oci-layout: %w", err)
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: append([]ocispec.Descriptor{}, a.manifests...), // [] rather than null
	})
	if err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	tw := tar.NewWriter(w)
	entries := []Entry{
		File(ocispec.ImageLayoutFile, 0o644, layout),
		Dir(ocispec.ImageBlobsDir, 0o755),
		Dir(ocispec.ImageBlobsDir+"/sha256", 0o755),
	}
	for _, d := range slices.Sorted(maps.Keys(a.blobs)) {
		name := ocispec.ImageBlobsDir + "/" + d.Algorithm().String() + "/" + d.Encoded()
		entries = append(entries, File(name, 0o644, a.blobs[d]))
	}
	entries = append(entries, File(ocispec.ImageIndexFile, 0o644, index))
	for _, e := range entries {
		if err := writeEntry(tw, e); err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}
