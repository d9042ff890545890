package e2eimages

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/capstan-net/capstan/internal/atomicfile"
	"github.com/capstan-net/capstan/internal/ocilayout"
)

// NodeOptions are the inputs of BuildNode.
type NodeOptions struct {
	// Ref is the image's name, e.g. capstan.local/capstan:0.1.0.
	Ref string
	// Debs is the directory downloaded .debs are kept in (bin/debs).
	Debs string
	// Bin holds capstan, capstan-cni and portmap (make build).
	Bin string
	Log *slog.Logger
}

// nodePrograms are what the node image runs, from Bin: the daemon, and
// the CNI plugins its init container installs on the node.
func nodePrograms() []string { return []string{"capstan", "capstan-cni", "portmap"} }

// WriteNode builds the node image (Capstan's DaemonSet) into an archive at
// path, replacing it atomically.
func WriteNode(ctx context.Context, opts NodeOptions, path string) error {
	var buf bytes.Buffer
	if err := BuildNode(ctx, opts, &buf); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create output dir: %w", err)
	}
	return atomicfile.Write(path, buf.Bytes(), 0o644)
}

// BuildNode writes the node image: capstan, capstan-cni and portmap in
// /usr/local/bin with the shared libraries they link (from Debian, not the
// build machine), and iptables (nft) for iptables mode and for removing
// that mode's rules. Nothing else: no shell.
func BuildNode(ctx context.Context, opts NodeOptions, w io.Writer) error {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	triplet, err := Triplet(runtime.GOARCH)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "capstan-node-image-")
	if err != nil {
		return fmt.Errorf("create staging dir: %w", err)
	}
	defer os.RemoveAll(dir)
	deb := Debian{Cache: opts.Debs, Log: opts.Log}
	if _, err := deb.Unpack(ctx, []string{"iptables", "libc6", "netbase"}, dir); err != nil {
		return err
	}
	// The programs sit in the staging root, so that their libraries are
	// resolved among Debian's.
	var progs []string
	for _, name := range nodePrograms() {
		data, err := os.ReadFile(filepath.Join(opts.Bin, name))
		if err != nil {
			return fmt.Errorf("node image: %w (make build)", err)
		}
		p := filepath.Join("usr/local/bin", name)
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, p), data, 0o755); err != nil {
			return err
		}
		progs = append(progs, p)
	}
	root, ok := os.DirFS(dir).(fs.ReadLinkFS)
	if !ok {
		return fmt.Errorf("staging dir %s: file system cannot read symlinks", dir)
	}
	s := &staging{root: root, resolver: Resolver{Root: root, Dirs: LibDirs(triplet)}}
	nf := netfilterFiles(triplet)
	nf.Programs = []string{"usr/sbin/xtables-nft-multi"} // no conntrack tool
	nf.Programs = append(nf.Programs, progs...)
	nf.Files = []string{"etc/protocols", "etc/services"}
	t := tree{}
	if err := s.debLayer(t, nf); err != nil {
		return fmt.Errorf("node image: %w", err)
	}
	t.add(ocilayout.Dir("tmp", 0o1777), ocilayout.Dir("run", 0o755))
	l, err := layer(t)
	if err != nil {
		return err
	}
	opts.Log.Info("built layer", "layer", "node", "files", len(t), "gzip", byteSize(len(l.Blob)))
	var archive ocilayout.Archive
	desc, err := archive.Add(ocilayout.Image{
		Ref: opts.Ref, Layers: []ocilayout.Layer{l}, CreatedBy: "capstan make images",
		Config: ocispec.ImageConfig{Env: []string{envPath}, Cmd: []string{"capstan", "dataplane"}, WorkingDir: "/"},
	})
	if err != nil {
		return err
	}
	opts.Log.Info("built image", "ref", opts.Ref, "manifest", desc.Digest)
	return archive.Write(w)
}
