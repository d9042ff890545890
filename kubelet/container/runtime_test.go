package container

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/capstan-net/capstan/internal/ctrdtest"
	"github.com/capstan-net/capstan/kubelet/images"
	"github.com/capstan-net/capstan/test/images/imagebuild"
)

// A wait that breaks off (the context of whoever started the container ends,
// as when the agent stops) is not an exit: the container must not be recorded
// as exited, or the next agent would fail or restart a running pod. The exit
// that does come later must still be recorded.
func TestBrokenOffWaitIsNoExit(t *testing.T) {
	c := ctrdtest.Client(t)
	ns := ctrdtest.Namespace(t, c)
	archive := filepath.Join(t.TempDir(), "images.tar")
	if err := imagebuild.WriteFile(context.Background(), imagebuild.Options{}, archive); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	if _, err := images.Import(context.Background(), c, ns, archive, log); err != nil {
		t.Fatal(err)
	}
	life, stop := context.WithCancel(context.Background())
	defer stop()
	exits := make(chan Info, 1)
	r := New(Config{Client: c, Namespace: ns, Log: log, OnExit: func(i Info) { exits <- i }})
	go r.Run(life)

	img, err := r.EnsureImage(life, "capstan.local/echo:1.0", false, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Create(life, "pause", img, map[string]string{}, []oci.SpecOpts{oci.WithProcessArgs("/capstan-echo", "pause")}); err != nil {
		t.Fatal(err)
	}
	starter, cancel := context.WithCancel(context.Background())
	if err := r.Start(starter, "pause"); err != nil {
		t.Fatal(err)
	}
	cancel() // the wait Start began breaks off
	time.Sleep(1500 * time.Millisecond)
	info, err := r.Inspect(life, "pause")
	if err != nil {
		t.Fatal(err)
	}
	if info.State != StateRunning {
		t.Fatalf("after the wait broke off the container is %s (exit %d, %s), want running", info.State, info.ExitCode, info.Reason)
	}
	// The resumed wait sees the real exit.
	if err := r.Stop(life, "pause", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exits:
	case <-time.After(10 * time.Second):
		t.Fatal("no exit recorded after the stop")
	}
	info, err = r.Inspect(life, "pause")
	if err != nil {
		t.Fatal(err)
	}
	if info.State != StateExited || info.ExitCode != 0 {
		t.Fatalf("after SIGTERM: %s exit %d (%s), want exited 0", info.State, info.ExitCode, info.Reason)
	}
	if err := r.Remove(life, "pause"); err != nil {
		t.Fatal(err)
	}
}
