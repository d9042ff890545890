// Package containerd runs a node's own containerd: its configuration (own
// root, state and socket, the CRI plugin set up for capstan-cni) and a
// supervisor that restarts it when it dies. Containers outlive it: their
// shims keep running, and a new containerd takes them over.
package containerd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/containerd/containerd/v2/client"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// SandboxImage is the pod sandbox image the CRI plugin runs, under
// containerd's default name; the agent makes it locally (there is no
// registry), and the upstream e2e suite expects that name.
const SandboxImage = "registry.k8s.io/pause:3.10.2"

// Namespace is the containerd namespace the CRI plugin keeps pods and images in.
const Namespace = "k8s.io"

// Config describes one node's containerd.
type Config struct {
	// Binary is the containerd executable; the directory of its
	// containerd-shim-runc-v2 is put first on its PATH.
	Binary  string
	ShimDir string
	// Root holds images and snapshots (persistent); State holds sockets,
	// pod network namespaces and runc's state (runtime).
	Root, State string
	CNIConfDir  string
	CNIBinDirs  []string
	// LogFile receives containerd's output.
	LogFile string
	Log     *slog.Logger
}

// ShimSocketDir is where the shims of the containerd with this state dir
// listen. A unix socket path has at most 107 bytes and a shim's name takes
// 65 of them, so the directory is short and derived from the state dir,
// never shared with another node (whose shims a stale socket would confuse).
func ShimSocketDir(state string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(state)))
	return filepath.Join(ShimSocketRoot, hex.EncodeToString(sum[:6]))
}

// ShimSocketRoot holds every node's shim socket directory.
const ShimSocketRoot = "/run/capstan/shims"

// Socket is the containerd's gRPC socket.
func (c *Config) Socket() string { return filepath.Join(c.State, "containerd.sock") }

// Endpoint is the socket as a CRI endpoint for the kubelet.
func (c *Config) Endpoint() string { return "unix://" + c.Socket() }

func (c *Config) configFile() string { return filepath.Join(c.State, "config.toml") }

// configTemplate is containerd 2's configuration (format 3). Choices that
// differ from the defaults, and why:
//   - no imports: the host's /etc/containerd must not change a node;
//   - NRI off: its socket path is host-wide and would clash between nodes;
//   - restrict_oom_score_adj: without CAP_SYS_RESOURCE (hosts such as CI
//     sandboxes) runc cannot lower a container's oom_score_adj;
//   - pod netns under the state dir, not /run/netns, so nodes keep theirs apart;
//   - the CNI plugin brings up lo itself (no loopback plugin binary needed);
//   - runc's state per node, so each node's containers stay its own.
var configTemplate = template.Must(template.New("config").Parse(`version = 3
root = {{printf "%q" .Root}}
state = {{printf "%q" .State}}
imports = []

[grpc]
  address = {{printf "%q" .Socket}}

[ttrpc]
  address = {{printf "%q" (print .Socket ".ttrpc")}}

[plugins.'io.containerd.internal.v1.opt']
  path = {{printf "%q" (print .Root "/opt")}}

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = {{printf "%q" .ShimSockets}}

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = {{printf "%q" .SandboxImage}}

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [{{range $i, $d := .CNIBinDirs}}{{if $i}}, {{end}}{{printf "%q" $d}}{{end}}]
    conf_dir = {{printf "%q" .CNIConfDir}}
    max_conf_num = 1
    use_internal_loopback = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      Root = {{printf "%q" (print .State "/runc")}}
      SystemdCgroup = false

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`))

// WriteConfig writes the node's containerd configuration.
func (c *Config) WriteConfig() error {
	var b bytes.Buffer
	err := configTemplate.Execute(&b, struct {
		*Config
		Socket, SandboxImage, ShimSockets string
	}{c, c.Socket(), SandboxImage, ShimSocketDir(c.State)})
	if err != nil {
		return fmt.Errorf("containerd config: %w", err)
	}
	for _, d := range []string{c.Root, c.State} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return err
		}
	}
	return atomicfile.Write(c.configFile(), b.Bytes(), 0o644)
}

// Supervise runs containerd until ctx ends, restarting it (after a pause
// that grows to 30 s) whenever it exits. ready is called each time a
// containerd answers.
func (c *Config) Supervise(ctx context.Context, ready func()) error {
	if err := c.WriteConfig(); err != nil {
		return err
	}
	backoff := time.Second
	for {
		start := time.Now()
		err := c.runOnce(ctx, ready)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		c.Log.Error("containerd exited; restarting", "err", err, "in", backoff, "log", c.LogFile)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// runOnce starts containerd, waits for it to answer, then until it exits
// or ctx ends (then it gets SIGTERM, and SIGKILL 10 s later).
func (c *Config) runOnce(ctx context.Context, ready func()) error {
	// Pdeathsig fires when the thread that forked the child exits; holding
	// this goroutine to its thread until containerd is gone keeps that
	// thread alive for as long as the agent is.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	logf, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// A socket left by a killed containerd would make it refuse to start.
	os.Remove(c.Socket())
	cmd := exec.Command(c.Binary, "--config", c.configFile())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+c.ShimDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	// If the agent dies, containerd follows (its containers do not): the
	// next agent starts a new one.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		if WaitReady(wctx, c.Socket(), 30*time.Second) == nil {
			c.Log.Info("containerd ready", "socket", c.Socket(), "pid", cmd.Process.Pid)
			ready()
		}
	}()
	defer cancel()
	select {
	case err := <-exited:
		return fmt.Errorf("containerd: %w; last lines: %s", err, tail(c.LogFile, 5))
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		return nil
	}
}

// WaitReady waits until a containerd answers on socket.
func WaitReady(ctx context.Context, socket string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if _, err := os.Stat(socket); err == nil {
			c, err := client.New(socket, client.WithTimeout(2*time.Second))
			if err == nil {
				_, err = c.Version(ctx)
				c.Close()
				if err == nil {
					return nil
				}
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if last == nil {
		last = errors.New("no socket")
	}
	return fmt.Errorf("containerd at %s did not answer in %s: %w", socket, timeout, last)
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
