// Package healthcheck answers load balancers' health checks for services with
// externalTrafficPolicy Local, as kube-proxy does: on the service's healthCheckNodePort, 200
// while this node has a local endpoint to send traffic to, 503 otherwise, so the load
// balancer only sends to nodes that keep the client address and can serve it.
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/dataplane"
)

// Config is what a Server needs.
type Config struct {
	// Listen opens the listener for a health-check port; nil listens on all addresses of the
	// daemon's network namespace.
	Listen func(port uint16) (net.Listener, error)
	Logger *slog.Logger
}

// Server is a dataplane.Backend serving every healthCheckNodePort in the State.
type Server struct {
	listen func(port uint16) (net.Listener, error)
	log    *slog.Logger

	mu    sync.Mutex
	ports map[uint16]*port
}

var _ dataplane.Backend = (*Server)(nil)

type port struct {
	srv   *http.Server
	state atomic.Pointer[status]
}

type status struct {
	svc   types.NamespacedName
	local int
}

// New returns a Server with no ports open.
func New(cfg Config) *Server {
	if cfg.Listen == nil {
		cfg.Listen = func(p uint16) (net.Listener, error) { return net.Listen("tcp", fmt.Sprintf(":%d", p)) }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{listen: cfg.Listen, log: cfg.Logger, ports: make(map[uint16]*port)}
}

// Sync opens the ports st wants, closes the others and updates what each answers.
func (s *Server) Sync(ctx context.Context, st *dataplane.State) error {
	want := make(map[uint16]*status)
	local := make(map[uint16]map[string]bool)
	for _, sp := range st.Services {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		p := sp.HealthCheckNodePort
		if want[p] == nil {
			want[p] = &status{svc: sp.Name.NamespacedName}
			local[p] = make(map[string]bool)
		}
		// External targets of a Local service are this node's endpoints; count ready pods,
		// not ports, across the service's ports. Terminating ones still take traffic when
		// no other is left, but a load balancer should stop sending it here.
		for _, t := range sp.ExternalTargets {
			if t.Ready {
				local[p][t.Addr.String()] = true
			}
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for p, hp := range s.ports {
		if want[p] == nil {
			errs = append(errs, hp.srv.Close())
			delete(s.ports, p)
		}
	}
	for p, stt := range want {
		stt.local = len(local[p])
		hp := s.ports[p]
		if hp == nil {
			ln, err := s.listen(p)
			if err != nil {
				errs = append(errs, fmt.Errorf("health check port %d of %s: %w", p, stt.svc, err))
				continue
			}
			hp = &port{}
			hp.srv = &http.Server{Handler: hp, ReadHeaderTimeout: 5 * time.Second}
			s.ports[p] = hp
			go func() {
				if err := hp.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					s.log.Warn("health check server", "port", p, "err", err)
				}
			}()
		}
		hp.state.Store(stt)
	}
	return errors.Join(errs...)
}

// Close closes every port.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for p, hp := range s.ports {
		errs = append(errs, hp.srv.Close())
		delete(s.ports, p)
	}
	return errors.Join(errs...)
}

// ServeHTTP answers with kube-proxy's body, which some load-balancer controllers read.
func (hp *port) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	st := hp.state.Load()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if st.local == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(map[string]any{
		"service":             map[string]string{"namespace": st.svc.Namespace, "name": st.svc.Name},
		"localEndpoints":      st.local,
		"serviceProxyHealthy": true,
	})
}
