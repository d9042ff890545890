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
// internal/ocilayout writes the archive: each manifest in index.json is named
// by its full reference both ways containerd reads (so `ctr images import` and
// the agent's import agree), and every timestamp is fixed, so the same inputs
// give the same archive.
package imagebuild

import (
	"bytes"
	"context"
	"debug/elf"
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

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/capstan-net/capstan/internal/ocilayout"
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

	l, err := layer(busybox, applets, echo)
	if err != nil {
		return err
	}
	log.Info("built layer", "applets", len(applets), "bytes", len(l.Blob), "digest", l.Digest)

	var archive ocilayout.Archive
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
		img.config.Env = []string{envPath}
		img.config.WorkingDir = "/"
		desc, err := archive.Add(ocilayout.Image{
			Ref:       img.ref,
			Config:    img.config,
			Layers:    []ocilayout.Layer{l},
			CreatedBy: "capstan test/images/imagebuild",
		})
		if err != nil {
			return err
		}
		log.Info("built image", "ref", img.ref, "manifest", desc.Digest)
	}
	return archive.Write(w)
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

// layer makes the images' shared root filesystem layer.
func layer(busybox []byte, applets []string, echo []byte) (ocilayout.Layer, error) {
	entries := []ocilayout.Entry{
		ocilayout.Dir("bin", 0o755),
		ocilayout.File("bin/busybox", 0o755, busybox),
	}
	for _, a := range applets {
		entries = append(entries, ocilayout.Symlink("bin/"+a, "busybox"))
	}
	entries = append(entries,
		ocilayout.File("capstan-echo", 0o755, echo),
		ocilayout.Dir("etc", 0o755),
		ocilayout.File("etc/group", 0o644, []byte("root:x:0:\nnobody:x:65534:\n")),
		ocilayout.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")),
		ocilayout.Dir("root", 0o700),
		ocilayout.Dir("tmp", 0o1777),
	)
	return ocilayout.NewLayer(entries...)
}
