package images

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/capstan-net/capstan/internal/ctrdtest"
	"github.com/capstan-net/capstan/test/images/imagebuild"
)

// run runs a container from ref with spec options and returns its stdout,
// stderr and exit status; the container is removed afterwards.
func run(t *testing.T, ctx context.Context, c *client.Client, ref, id string, opts ...oci.SpecOpts) (stdout, stderr string, code uint32) {
	t.Helper()
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		t.Fatalf("get image %s: %v", ref, err)
	}
	specOpts := append([]oci.SpecOpts{oci.WithImageConfig(img)}, opts...)
	ctr, err := c.NewContainer(ctx, id,
		client.WithImage(img),
		client.WithSnapshotter(Snapshotter),
		client.WithNewSnapshot(id, img),
		client.WithNewSpec(specOpts...),
	)
	if err != nil {
		t.Fatalf("create container %s from %s: %v", id, ref, err)
	}
	defer func() {
		if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			t.Errorf("delete container %s: %v", id, err)
		}
	}()
	// One buffer each: cio copies the two streams concurrently.
	var outBuf, errBuf bytes.Buffer
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &outBuf, &errBuf), cio.WithFIFODir(t.TempDir())))
	if err != nil {
		t.Fatalf("create task %s: %v", id, err)
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		task.Delete(ctx, client.WithProcessKill)
		t.Fatalf("wait task %s: %v", id, err)
	}
	if err := task.Start(ctx); err != nil {
		task.Delete(ctx, client.WithProcessKill)
		t.Fatalf("start task %s: %v", id, err)
	}
	var status client.ExitStatus
	select {
	case status = <-exited:
	case <-ctx.Done():
		task.Delete(ctx, client.WithProcessKill)
		t.Fatalf("task %s did not exit: %v", id, ctx.Err())
	}
	// Read the output to its end before Delete, which closes the pipes and so
	// loses what the shim has not yet passed on.
	copied := make(chan struct{})
	go func() { task.IO().Wait(); close(copied) }()
	select {
	case <-copied:
	case <-time.After(10 * time.Second):
		t.Errorf("output of task %s did not end", id)
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatalf("delete task %s: %v", id, err)
	}
	if err := status.Error(); err != nil {
		t.Fatalf("task %s: %v", id, err)
	}
	return outBuf.String(), errBuf.String(), status.ExitCode()
}

func TestImport(t *testing.T) {
	c := ctrdtest.Client(t)
	ns := ctrdtest.Namespace(t, c)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(t.Context(), ns), 5*time.Minute)
	defer cancel()

	archive := filepath.Join(t.TempDir(), "capstan-test-images.tar")
	if err := imagebuild.WriteFile(ctx, imagebuild.Options{}, archive); err != nil {
		t.Fatalf("build test images: %v", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	want := []string{imagebuild.BusyboxImage, imagebuild.EchoImage}

	names, err := Import(ctx, c, ns, archive, log)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if !slices.Equal(names, want) {
		t.Fatalf("Import = %q, want %q", names, want)
	}
	targets := map[string]string{}
	for _, ref := range want {
		img, err := c.GetImage(ctx, ref)
		if err != nil {
			t.Fatalf("image %s after import: %v", ref, err)
		}
		targets[ref] = img.Target().Digest.String()
		ok, err := img.IsUnpacked(ctx, Snapshotter)
		if err != nil || !ok {
			t.Errorf("image %s unpacked into %s: %v, %v", ref, Snapshotter, ok, err)
		}
		// Unpack labels each image's config with its snapshot, which keeps the
		// shared snapshot alive for either image alone.
		cfg, err := img.Config(ctx)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.ContentStore().Info(ctx, cfg.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if info.Labels["containerd.io/gc.ref.snapshot."+Snapshotter] == "" {
			t.Errorf("image %s: config has no snapshot gc label: %v", ref, info.Labels)
		}
	}

	// Importing again is fine and changes nothing.
	start := time.Now()
	names, err = Import(ctx, c, ns, archive, log)
	if err != nil {
		t.Fatalf("second Import: %v", err)
	}
	t.Logf("second import took %s", time.Since(start))
	if !slices.Equal(names, want) {
		t.Errorf("second Import = %q, want %q", names, want)
	}
	for _, ref := range want {
		img, err := c.GetImage(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := img.Target().Digest.String(); got != targets[ref] {
			t.Errorf("image %s moved from %s to %s on re-import", ref, targets[ref], got)
		}
	}

	img, err := c.GetImage(ctx, imagebuild.BusyboxImage)
	if err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := run(t, ctx, c, imagebuild.BusyboxImage, "busybox-echo",
		oci.WithImageConfigArgs(img, []string{"echo", "hello"})); code != 0 || out != "hello\n" {
		t.Errorf("busybox echo hello: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// runAsUser: nobody comes from the image's /etc/passwd; /tmp is writable by all.
	if out, errOut, code := run(t, ctx, c, imagebuild.BusyboxImage, "busybox-nobody",
		oci.WithProcessArgs("sh", "-c", "id; stat -c %a /tmp; touch /tmp/x && echo wrote"),
		oci.WithUser("nobody")); code != 0 || out != "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)\n1777\nwrote\n" {
		t.Errorf("busybox as nobody: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	echo, err := c.GetImage(ctx, imagebuild.EchoImage)
	if err != nil {
		t.Fatal(err)
	}
	// The entrypoint stays /capstan-echo; hostname replaces the default cmd.
	if out, errOut, code := run(t, ctx, c, imagebuild.EchoImage, "echo-hostname",
		oci.WithImageConfigArgs(echo, []string{"hostname"}), oci.WithHostname("pod-echo")); code != 0 || out != "pod-echo\n" {
		t.Errorf("capstan-echo hostname: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if out, errOut, code := run(t, ctx, c, imagebuild.EchoImage, "echo-crash",
		oci.WithImageConfigArgs(echo, []string{"crash", "--code", "3"})); code != 3 || out != "crashing with code 3 after 0s\n" {
		t.Errorf("capstan-echo crash --code 3: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestImportErrors(t *testing.T) {
	c := ctrdtest.Client(t)
	ns := ctrdtest.Namespace(t, c)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	if _, err := Import(ctx, c, ns, filepath.Join(t.TempDir(), "missing.tar"), log); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Import of a missing file: %v, want not exist", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.tar")
	if err := os.WriteFile(bad, []byte("not a tar"), 0o644); err != nil {
		t.Fatal(err)
	}
	if names, err := Import(ctx, c, ns, bad, log); err == nil {
		t.Errorf("Import of garbage = %q, want an error", names)
	}

	// An archive whose manifests carry no name annotation imports nothing usable.
	var built bytes.Buffer
	if err := imagebuild.Build(ctx, imagebuild.Options{Echo: bad}, &built); err != nil {
		t.Fatal(err)
	}
	unnamed := filepath.Join(t.TempDir(), "unnamed.tar")
	if err := os.WriteFile(unnamed, stripNames(t, built.Bytes()), 0o644); err != nil {
		t.Fatal(err)
	}
	if names, err := Import(ctx, c, ns, unnamed, log); !errors.Is(err, ErrNoImages) {
		t.Errorf("Import of an archive without names = %q, %v; want ErrNoImages", names, err)
	}
}

// stripNames rewrites an image-layout archive without the manifests' annotations.
func stripNames(t *testing.T, archive []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	tr := tar.NewReader(bytes.NewReader(archive))
	tw := tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == ocispec.ImageIndexFile {
			var index ocispec.Index
			if err := json.Unmarshal(data, &index); err != nil {
				t.Fatal(err)
			}
			for i := range index.Manifests {
				index.Manifests[i].Annotations = nil
			}
			if data, err = json.Marshal(index); err != nil {
				t.Fatal(err)
			}
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
