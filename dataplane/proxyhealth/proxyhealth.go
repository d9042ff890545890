// Package proxyhealth answers the health and status URLs of kube-proxy, so that load
// balancers probing a node's service proxy (port 10256: /healthz, /livez) and tools asking
// its mode (port 10249: /proxyMode) find Capstan's dataplane where they found kube-proxy.
package proxyhealth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// kube-proxy's default addresses for these URLs.
const (
	HealthzAddr = "0.0.0.0:10256"
	StatusAddr  = "127.0.0.1:10249"
)

// Tracker follows the dataplane's syncs: it is healthy once a sync has succeeded and while no
// sync has been due for longer than the timeout without one succeeding since.
type Tracker struct {
	clk     clock.PassiveClock
	timeout time.Duration

	mu              sync.Mutex
	queued, updated time.Time
}

// New returns a Tracker; timeout is how long a due sync may take before the node is
// reported unhealthy (kube-proxy's healthz timeout is 2 minutes).
func New(clk clock.PassiveClock, timeout time.Duration) *Tracker {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Tracker{clk: clk, timeout: timeout}
}

// Queued records that a sync is due.
func (t *Tracker) Queued() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.queued = t.clk.Now()
}

// Updated records that a sync succeeded.
func (t *Tracker) Updated() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.updated = t.clk.Now()
}

// status is the body kube-proxy's /healthz returns.
type status struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible bool      `json:"nodeEligible"`
}

func (t *Tracker) status() (status, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clk.Now()
	healthy := !t.updated.IsZero() && (!t.updated.Before(t.queued) || now.Sub(t.queued) < t.timeout)
	return status{LastUpdated: t.updated, CurrentTime: now, NodeEligible: true}, healthy
}

// ServeHTTP answers /healthz and /livez: 200 and the times while healthy, 503 otherwise.
func (t *Tracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/healthz" && r.URL.Path != "/livez" {
		http.NotFound(w, r)
		return
	}
	st, healthy := t.status()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(st)
}

// ModeHandler answers /proxyMode with the service mode, as kube-proxy names its own.
func ModeHandler(mode string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, mode)
	})
}
