// Package servertest runs a real `capstan server` for integration tests:
// embedded etcd under a temporary data dir, HTTPS on a free loopback port.
// The server runs in a child process (the test binary re-executed), so a
// test can kill it with SIGKILL and start it again on the same data.
package servertest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/control/server"
)

const childEnv = "CAPSTAN_SERVERTEST_CHILD"

// MaybeRunChild must be called first in TestMain: in the child process it
// runs the server and exits.
func MaybeRunChild() {
	args := os.Getenv(childEnv)
	if args == "" {
		return
	}
	var cfg server.Config
	parts := strings.Split(args, "|")
	cfg.DataDir = parts[0]
	if len(parts) > 1 && parts[1] != "" {
		cfg.EtcdServers = strings.Split(parts[1], ",")
	}
	if len(parts) > 2 && parts[2] != "" {
		d, _ := time.ParseDuration(parts[2])
		cfg.CompactionInterval = d
	}
	if len(parts) > 3 {
		cfg.EtcdPrefix = parts[3]
	}
	if len(parts) > 4 && parts[4] != "" {
		cfg.Controllers.Enabled = strings.Split(parts[4], ",")
	}
	cfg.BindAddress = "127.0.0.1"
	if len(parts) > 5 && parts[5] != "" {
		cfg.BindAddress = parts[5]
	}
	cfg.Controllers.LeaderElect = true
	cfg.Controllers.Identity = Identity(cfg.DataDir)
	cfg.BookmarkInterval = 2 * time.Second
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	// Exit when the test binary dies. (Pdeathsig would fire when the OS
	// thread that forked us exits, which Go may do at any time.)
	parent := os.Getppid()
	go func() {
		for range time.Tick(500 * time.Millisecond) {
			if os.Getppid() != parent {
				cancel()
				return
			}
		}
	}()
	if err := server.Run(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Options tune a test server.
type Options struct {
	// EtcdEndpoints selects an external etcd; empty embeds one.
	EtcdEndpoints []string
	// CompactionInterval, zero for the default.
	CompactionInterval time.Duration
	// Controllers selects the server's control loops (see server
	// ControllersConfig.Enabled); nil runs only the namespace controller,
	// so tests of the API or of one loop are not disturbed by the others.
	Controllers []string
	// EtcdPrefix shares one cluster's keys between servers on one external
	// etcd (HA tests); empty gives each server its own prefix.
	EtcdPrefix string
	// BindAddress is the address the server listens on (default
	// 127.0.0.1); node tests bind a harness link that node netns reach.
	BindAddress string
}

// Server is a running test server.
type Server struct {
	t       testing.TB
	DataDir string
	opts    Options
	prefix  string
	cmd     *exec.Cmd
	// Config reaches the server as the admin.
	Config *rest.Config
	// Kubeconfig is the admin kubeconfig path.
	Kubeconfig string
}

// Start runs a server for the test and stops it in Cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{t: t, DataDir: t.TempDir(), opts: opts}
	if opts.EtcdPrefix != "" {
		s.prefix = opts.EtcdPrefix
	} else if len(opts.EtcdEndpoints) > 0 {
		// Tests share one external etcd; each server gets its own keys.
		s.prefix = fmt.Sprintf("/capstan-test/%d", time.Now().UnixNano())
	}
	s.Kubeconfig = server.AdminKubeconfig(s.DataDir)
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// EnvEtcd returns external etcd endpoints from CAPSTAN_TEST_ETCD, so the
// same suite can run against a separately started etcd.
func EnvEtcd() []string {
	if v := os.Getenv("CAPSTAN_TEST_ETCD"); v != "" {
		return strings.Split(v, ",")
	}
	return nil
}

func (s *Server) start() {
	s.t.Helper()
	os.Remove(s.Kubeconfig)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+s.DataDir+"|"+strings.Join(s.opts.EtcdEndpoints, ",")+"|"+s.opts.CompactionInterval.String()+"|"+s.prefix+"|"+strings.Join(s.controllers(), ",")+"|"+s.opts.BindAddress)
	logf, err := os.Create(filepath.Join(s.DataDir, fmt.Sprintf("server-%d.log", time.Now().UnixNano())))
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start server: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(s.Kubeconfig); err == nil {
			cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
			if err == nil {
				cs := kubernetes.NewForConfigOrDie(cfg)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err = cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
				cancel()
				if err == nil {
					cfg.QPS, cfg.Burst = 1000, 2000
					s.Config = cfg
					return
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	data, _ := os.ReadFile(logf.Name())
	s.t.Fatalf("server did not become ready; log:\n%s", data)
}

func (s *Server) controllers() []string {
	if s.opts.Controllers == nil {
		return []string{"namespace"}
	}
	return s.opts.Controllers
}

// Identity is the leader-election identity of the server on dataDir.
func Identity(dataDir string) string {
	return "servertest-" + filepath.Base(filepath.Dir(dataDir)) + "-" + filepath.Base(dataDir)
}

// Identity is this server's leader-election identity.
func (s *Server) Identity() string { return Identity(s.DataDir) }

// Kill stops the server with SIGKILL, as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// Restart kills the server and starts it again on the same data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.start()
}

// Stop ends the server gracefully.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
		s.cmd = nil
	}
}

// Client is a clientset for the admin.
func (s *Server) Client() kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(s.Config)
}
