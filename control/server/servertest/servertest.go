// Package servertest runs a real `capstan server` (the binary, in a child
// process) on a free loopback port and a data dir of its own, for tests and
// benchmarks that need a control plane: the process can be killed and
// started again on the same data.
package servertest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/test/integration/testbin"
)

// Options describe a server.
type Options struct {
	// Binary is the capstan binary.
	Binary string
	// DataDir is the server's; it is created if missing.
	DataDir string
	// Args are extra `capstan server` flags (external etcd, component flags).
	Args []string
}

// Server is a running server.
type Server struct {
	opts Options
	Port int
	cmd  *exec.Cmd
	// exited receives the process's end.
	exited chan error
	// Config reaches the server as the admin; Kubeconfig is its file.
	Config     *rest.Config
	Kubeconfig string
	// Log is the server's output.
	Log string
}

// Start runs a server and waits until it is ready and admits pods. Its controller manager
// and scheduler serve no port, so several servers can share a machine.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, Port: port, Kubeconfig: filepath.Join(opts.DataDir, "admin.kubeconfig"),
		Log: filepath.Join(opts.DataDir, "server.log")}
	if err := s.start(ctx); err != nil {
		return s, err
	}
	return s, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start(ctx context.Context) error {
	args := append([]string{"server", "--data-dir", s.opts.DataDir, "--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(s.Port),
		"--kube-controller-manager-arg", "secure-port=0", "--kube-scheduler-arg", "secure-port=0"}, s.opts.Args...)
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.opts.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the process that started it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	s.cmd = cmd
	exited := make(chan error, 1)
	s.exited = exited
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if err := s.ready(ctx); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			s.cmd = nil
			exited <- err
			return fmt.Errorf("server exited: %v; log %s", err, s.Log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("server not ready after 2m; log %s", s.Log)
}

func (s *Server) ready(ctx context.Context) error {
	rc, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx); err != nil {
		return err
	}
	// Pods are refused until the controller manager has made the default
	// ServiceAccount, a few seconds after /readyz: every caller creates pods.
	if _, err := cs.CoreV1().ServiceAccounts("default").Get(rctx, "default", metav1.GetOptions{}); err != nil {
		return err
	}
	rc.QPS, rc.Burst = 1000, 2000
	s.Config = rc
	return nil
}

// DataDir is the server's.
func (s *Server) DataDir() string { return s.opts.DataDir }

// Pid is the server process's.
func (s *Server) Pid() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Client is a clientset for the admin.
func (s *Server) Client() kubernetes.Interface { return kubernetes.NewForConfigOrDie(s.Config) }

// Kill stops the server with SIGKILL, as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil {
		s.cmd.Process.Kill()
		<-s.exited
		s.cmd = nil
	}
}

// Restart kills the server and starts it again on the same data and port.
func (s *Server) Restart(ctx context.Context) error {
	s.Kill()
	return s.start(ctx)
}

// Stop ends the server with SIGTERM, then SIGKILL after 20 s.
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-s.exited:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		err = errors.New("server did not stop in 20s")
	}
	s.cmd = nil
	return err
}

// ForTest starts a server for t (stopped when t ends) with the capstan
// binary in $CAPSTAN_BINARY (make test sets it), else one built for the test.
func ForTest(t testing.TB, args ...string) *Server {
	t.Helper()
	return ForTestIn(t, t.TempDir(), args...)
}

// ForTestIn is ForTest on a data dir of the caller's.
func ForTestIn(t testing.TB, dataDir string, args ...string) *Server {
	t.Helper()
	bin := os.Getenv("CAPSTAN_BINARY")
	if bin == "" {
		root, err := testbin.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		if bin, err = testbin.Build(root, t.TempDir()); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Start(context.Background(), Options{Binary: bin, DataDir: dataDir, Args: args})
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.opts.DataDir, "server.log"))
		t.Fatalf("%v\n%s", err, tail(string(log), 4000))
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			log, _ := os.ReadFile(s.Log)
			t.Errorf("stop server: %v\n%s", err, tail(string(log), 3000))
		}
	})
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
