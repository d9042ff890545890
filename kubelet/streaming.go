package kubelet

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/capstan-net/capstan/kubelet/container"
	"github.com/capstan-net/capstan/kubelet/server"
)

// Streaming serves the agent endpoint's logs, exec and port-forward from
// this kubelet's pods (it implements server.Pods).
type Streaming struct{ k *Kubelet }

// Streaming returns the kubelet's implementation of server.Pods.
func (k *Kubelet) Streaming() *Streaming { return &Streaming{k: k} }

var _ server.Pods = (*Streaming)(nil)

func (s *Streaming) pod(namespace, name string) (*corev1.Pod, error) {
	if s.k.pods == nil {
		return nil, fmt.Errorf("pod %s/%s: %w (agent starting)", namespace, name, server.ErrNotFound)
	}
	p, err := s.k.pods.Pods(namespace).Get(name)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", namespace, name, server.ErrNotFound)
	}
	return p, nil
}

// PodUID implements server.Pods.
func (s *Streaming) PodUID(namespace, name string) (types.UID, error) {
	p, err := s.pod(namespace, name)
	if err != nil {
		return "", err
	}
	return p.UID, nil
}

// instances returns a container's instances in the pod, newest first.
func (s *Streaming) instances(ctx context.Context, uid types.UID, name string) ([]container.Info, error) {
	infos, err := s.k.cfg.Runtime.ListPod(ctx, string(uid))
	if err != nil {
		return nil, err
	}
	var out []container.Info
	for _, c := range infos {
		if c.PodUID == string(uid) && c.ContainerKey == name {
			out = append(out, c)
		}
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Attempt > out[j-1].Attempt; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

// ContainerLog implements server.Pods.
func (s *Streaming) ContainerLog(ctx context.Context, namespace, name, cname string, previous bool) (string, <-chan struct{}, error) {
	pod, err := s.pod(namespace, name)
	if err != nil {
		return "", nil, err
	}
	list, err := s.instances(ctx, pod.UID, cname)
	if err != nil {
		return "", nil, err
	}
	if len(list) == 0 {
		return "", nil, fmt.Errorf("container %q in pod %q is waiting to start: %w", cname, name, server.ErrNotFound)
	}
	latest := list[0]
	done := make(chan struct{})
	if previous {
		close(done)
		if latest.Attempt == 0 {
			return "", nil, fmt.Errorf("previous terminated container %q in pod %q not found: %w", cname, name, server.ErrNotFound)
		}
		path := filepath.Join(filepath.Dir(latest.LogPath), strconv.Itoa(latest.Attempt-1)+".log")
		if _, err := os.Stat(path); err != nil {
			return "", nil, fmt.Errorf("previous terminated container %q in pod %q not found: %w", cname, name, server.ErrNotFound)
		}
		return path, done, nil
	}
	if latest.State != container.StateRunning {
		close(done)
		return latest.LogPath, done, nil
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			info, err := s.k.cfg.Runtime.Inspect(ctx, latest.ID)
			if err != nil || info.State != container.StateRunning {
				return
			}
		}
	}()
	return latest.LogPath, done, nil
}

// running finds the running instance of a container of the pod.
func (s *Streaming) running(ctx context.Context, podName string, uid string, cname string) (string, error) {
	namespace, name, _ := strings.Cut(podName, "/")
	if uid == "" {
		u, err := s.PodUID(namespace, name)
		if err != nil {
			return "", err
		}
		uid = string(u)
	}
	list, err := s.instances(ctx, types.UID(uid), cname)
	if err != nil {
		return "", err
	}
	if len(list) == 0 || list[0].State != container.StateRunning {
		return "", fmt.Errorf("container %q in pod %q is not running: %w", cname, podName, server.ErrNotFound)
	}
	return list[0].ID, nil
}

// ExecInContainer implements remotecommand.Executor.
func (s *Streaming) ExecInContainer(ctx context.Context, podName string, uid string, cname string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	id, err := s.running(ctx, podName, uid, cname)
	if err != nil {
		return err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	sizes := make(chan container.TerminalSize)
	go func() {
		defer close(sizes)
		for sz := range resize {
			select {
			case sizes <- container.TerminalSize{Width: sz.Width, Height: sz.Height}:
			case <-ctx.Done():
				return
			}
		}
	}()
	var stdout, stderr io.Writer
	if out != nil {
		stdout = out
	}
	if errw != nil {
		stderr = errw
	}
	code, err := s.k.cfg.Runtime.Exec(ctx, id, cmd, tty, in, stdout, stderr, sizes)
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

// AttachContainer implements remotecommand.Attacher. Container output
// goes to the log driver, so there is no stream to attach to; upstream's
// equivalent for this case is `kubectl logs -f`.
func (s *Streaming) AttachContainer(ctx context.Context, podName string, uid string, cname string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	return fmt.Errorf("attach is not supported by the Capstan agent; use kubectl logs -f or kubectl exec")
}

// PortForward implements portforward.PortForwarder: it connects to the
// port on the pod's loopback, from inside the pod's network namespace.
func (s *Streaming) PortForward(ctx context.Context, podName string, uid string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	if uid == "" {
		namespace, name, _ := strings.Cut(podName, "/")
		u, err := s.PodUID(namespace, name)
		if err != nil {
			return err
		}
		uid = string(u)
	}
	sb := s.k.loadSandbox(types.UID(uid))
	if sb == nil {
		return fmt.Errorf("pod %s has no network sandbox: %w", podName, server.ErrNotFound)
	}
	var conn net.Conn
	dial := func(ns.NetNS) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
		conn = c
		return err
	}
	var err error
	if sb.HostNetwork {
		err = dial(nil)
	} else {
		err = ns.WithNetNSPath(sb.Netns, dial)
	}
	if err != nil {
		return fmt.Errorf("port-forward to %s port %d: %w", podName, port, err)
	}
	defer conn.Close()
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(conn, stream); conn.(*net.TCPConn).CloseWrite(); errc <- err }()
	go func() { _, err := io.Copy(stream, conn); errc <- err }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		return nil
	}
	// Let the other direction finish draining.
	select {
	case <-errc:
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	return err
}
