// Package server is the node agent's HTTPS endpoint, the part of the
// kubelet's port 10250 API that the API server reaches for kubectl logs,
// exec, attach and port-forward:
//
//	GET      /containerLogs/{namespace}/{pod}/{container}
//	GET|POST /exec/{namespace}/{pod}[/{uid}]/{container}?command=...
//	GET|POST /attach/{namespace}/{pod}[/{uid}]/{container}
//	GET|POST /portForward/{namespace}/{pod}[/{uid}]
//	GET      /healthz
//
// Clients must present a certificate from the cluster CA; only members of
// system:masters (the API server) may use it.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/capstan-net/capstan/kubelet/logs"
)

// ErrNotFound is wrapped by Pods errors for a pod or container that is not
// on this node; the client gets 404.
var ErrNotFound = errors.New("not found")

// GroupMasters is the certificate organization allowed to use the server.
const GroupMasters = "system:masters"

// Pods is what the server needs from the agent.
type Pods interface {
	// ContainerLog finds the log file of a container (of its previous
	// instance if previous) and a channel closed once that instance has
	// exited (already closed for a previous one).
	ContainerLog(ctx context.Context, namespace, pod, container string, previous bool) (path string, done <-chan struct{}, err error)
	// PodUID resolves a pod on this node.
	PodUID(namespace, pod string) (types.UID, error)
	// ExecInContainer, AttachContainer and PortForward get the pod as
	// "<namespace>/<name>" and its UID.
	remotecommand.Executor
	remotecommand.Attacher
	portforward.PortForwarder
}

// Config wires the server.
type Config struct {
	// Cert is the serving certificate; ClientCAs verify client certificates.
	Cert      tls.Certificate
	ClientCAs *x509.CertPool
	Pods      Pods
	Log       *slog.Logger
	// Now is the clock for sinceSeconds; nil means time.Now.
	Now func() time.Time
	// StreamIdleTimeout closes an exec, attach or port-forward without
	// traffic; zero means four hours, as the kubelet.
	StreamIdleTimeout time.Duration
	// StreamCreationTimeout bounds the wait for a client's SPDY streams;
	// zero means 30 seconds.
	StreamCreationTimeout time.Duration
}

// Server serves the agent API.
type Server struct {
	cfg Config
	log *slog.Logger
	now func() time.Time
	mux *http.ServeMux
}

// New builds a server.
func New(cfg Config) *Server {
	if cfg.StreamIdleTimeout == 0 {
		cfg.StreamIdleTimeout = 4 * time.Hour
	}
	if cfg.StreamCreationTimeout == 0 {
		cfg.StreamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
	}
	s := &Server{cfg: cfg, log: cfg.Log, now: cfg.Now, mux: http.NewServeMux()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	s.mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.containerLogs)
	for _, m := range []string{"GET", "POST"} {
		s.mux.HandleFunc(m+" /exec/{namespace}/{pod}/{container}", s.exec)
		s.mux.HandleFunc(m+" /exec/{namespace}/{pod}/{uid}/{container}", s.exec)
		s.mux.HandleFunc(m+" /attach/{namespace}/{pod}/{container}", s.attach)
		s.mux.HandleFunc(m+" /attach/{namespace}/{pod}/{uid}/{container}", s.attach)
		s.mux.HandleFunc(m+" /portForward/{namespace}/{pod}", s.portForward)
		s.mux.HandleFunc(m+" /portForward/{namespace}/{pod}/{uid}", s.portForward)
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "no such path "+r.URL.Path)
	})
	return s
}

// Handler is the API behind client authorization; it expects requests
// that came over TLS with a verified client certificate.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
			writeStatus(w, http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "a client certificate from the cluster CA is required")
			return
		}
		leaf := r.TLS.VerifiedChains[0][0]
		if r.URL.Path != "/healthz" && !slices.Contains(leaf.Subject.Organization, GroupMasters) {
			writeStatus(w, http.StatusForbidden, metav1.StatusReasonForbidden,
				fmt.Sprintf("user %q may not use the node API", leaf.Subject.CommonName))
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// TLSConfig is the server side of TLS: Cert, and client certificates
// required and verified against ClientCAs.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{s.cfg.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    s.cfg.ClientCAs,
		MinVersion:   tls.VersionTLS12,
		// Exec, attach and port-forward upgrade the connection, which
		// HTTP/2 cannot do.
		NextProtos: []string{"http/1.1"},
	}
}

// Run listens on addr and serves until ctx ends.
func (s *Server) Run(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves TLS on ln until ctx ends; it closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, s.TLSConfig())) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Streams are hijacked connections that Shutdown does not wait for;
	// they end with ctx, which is their requests' base context.
	srv.Shutdown(sctx)
	return nil
}

func (s *Server) containerLogs(w http.ResponseWriter, r *http.Request) {
	ns, pod, container := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	opts, previous, err := logOptions(r, s.now())
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	path, done, err := s.cfg.Pods.ContainerLog(r.Context(), ns, pod, container, previous)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("container %q in pod %s/%s: %w", container, ns, pod, err))
		return
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = fmt.Errorf("no log for container %q in pod %s/%s: %w", container, ns, pod, ErrNotFound)
		}
		s.writeError(w, r, err)
		return
	}
	opts.Done = done
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fw := flushWriter{w: w, rc: http.NewResponseController(w)}
	fw.rc.Flush()
	if err := logs.Read(r.Context(), path, opts, fw, fw); err != nil && r.Context().Err() == nil {
		s.log.Warn("read container log", "namespace", ns, "pod", pod, "container", container, "err", err)
	}
}

// logOptions parses the query of /containerLogs as the kubelet does.
func logOptions(r *http.Request, now time.Time) (opts logs.ReadOptions, previous bool, err error) {
	q := r.URL.Query()
	flag := func(name string) (bool, error) {
		v := q.Get(name)
		if v == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("%s: %q is not a boolean", name, v)
		}
		return b, nil
	}
	number := func(name string, min int64) (*int64, error) {
		v := q.Get(name)
		if v == "" {
			return nil, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not an integer", name, v)
		}
		if n < min {
			return nil, fmt.Errorf("%s: must be at least %d", name, min)
		}
		return &n, nil
	}
	if opts.Follow, err = flag("follow"); err != nil {
		return opts, false, err
	}
	if previous, err = flag("previous"); err != nil {
		return opts, false, err
	}
	if opts.Timestamps, err = flag("timestamps"); err != nil {
		return opts, false, err
	}
	if tail := q.Get("tail"); tail != "" && q.Get("tailLines") == "" && tail != "all" {
		q.Set("tailLines", tail) // the kubelet's older name
	}
	if opts.TailLines, err = number("tailLines", 0); err != nil {
		return opts, false, err
	}
	if opts.LimitBytes, err = number("limitBytes", 1); err != nil {
		return opts, false, err
	}
	sinceSeconds, err := number("sinceSeconds", 1)
	if err != nil {
		return opts, false, err
	}
	if v := q.Get("sinceTime"); v != "" {
		if sinceSeconds != nil {
			return opts, false, errors.New("at most one of sinceTime or sinceSeconds may be specified")
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return opts, false, fmt.Errorf("sinceTime: %q is not an RFC3339 time", v)
		}
		opts.SinceTime = &t
	}
	if sinceSeconds != nil {
		t := now.Add(-time.Duration(*sinceSeconds) * time.Second)
		opts.SinceTime = &t
	}
	switch v := q.Get("stream"); v {
	case "", "All":
	case "Stdout":
		opts.Stream = logs.Stdout
	case "Stderr":
		opts.Stream = logs.Stderr
	default:
		return opts, false, fmt.Errorf("stream: %q is not one of All, Stdout, Stderr", v)
	}
	return opts, previous, nil
}

// flushWriter sends each write to the client at once, for follow.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.rc.Flush()
}

// pod resolves the pod of a stream request, checking the UID in the path.
func (s *Server) pod(w http.ResponseWriter, r *http.Request) (name string, uid types.UID, ok bool) {
	ns, pod := r.PathValue("namespace"), r.PathValue("pod")
	uid, err := s.cfg.Pods.PodUID(ns, pod)
	if err == nil && r.PathValue("uid") != "" && types.UID(r.PathValue("uid")) != uid {
		err = fmt.Errorf("uid %s: %w", r.PathValue("uid"), ErrNotFound)
	}
	if err != nil {
		s.writeError(w, r, fmt.Errorf("pod %s/%s: %w", ns, pod, err))
		return "", "", false
	}
	return ns + "/" + pod, uid, true
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "no command given")
		return
	}
	name, uid, ok := s.pod(w, r)
	if !ok {
		return
	}
	remotecommand.ServeExec(w, r, s.cfg.Pods, name, string(uid), r.PathValue("container"), cmd, opts,
		s.cfg.StreamIdleTimeout, s.cfg.StreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (s *Server) attach(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	name, uid, ok := s.pod(w, r)
	if !ok {
		return
	}
	remotecommand.ServeAttach(w, r, s.cfg.Pods, name, string(uid), r.PathValue("container"), opts,
		s.cfg.StreamIdleTimeout, s.cfg.StreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (s *Server) portForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	name, uid, ok := s.pod(w, r)
	if !ok {
		return
	}
	portforward.ServePortForward(w, r, s.cfg.Pods, name, string(uid), opts,
		s.cfg.StreamIdleTimeout, s.cfg.StreamCreationTimeout, portforward.SupportedProtocols)
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrNotFound) {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, err.Error())
		return
	}
	s.log.Error("node API request failed", "path", r.URL.Path, "err", err)
	writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
}

// writeStatus answers with a Status, which the API server passes on.
func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg,
	})
}
