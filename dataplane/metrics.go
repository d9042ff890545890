package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
)

// Metrics are the sync loop's Prometheus metrics.
type Metrics struct {
	syncs    *prometheus.CounterVec
	errors   prometheus.Counter
	duration prometheus.Histogram
	services prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "capstan_dataplane_syncs_total",
			Help: "Backend syncs, by result (success or error).",
		}, []string{"result"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "capstan_dataplane_sync_errors_total",
			Help: "Backend syncs that failed.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "capstan_dataplane_sync_duration_seconds",
			Help:    "Time a backend sync took.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "capstan_dataplane_service_ports",
			Help: "Service ports in the last synced state.",
		}),
	}
	for _, c := range []prometheus.Collector{m.syncs, m.errors, m.duration, m.services} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	// Both results exist from the start, so rate() works before the first failure.
	m.syncs.WithLabelValues("success")
	m.syncs.WithLabelValues("error")
	return m, nil
}

func (m *Metrics) observe(st *State, d time.Duration, err error) {
	if m == nil {
		return
	}
	m.duration.Observe(d.Seconds())
	if err != nil {
		m.syncs.WithLabelValues("error").Inc()
		m.errors.Inc()
		return
	}
	m.syncs.WithLabelValues("success").Inc()
	m.services.Set(float64(len(st.Services)))
}

// SyncFunc returns a Runner function that takes a snapshot, syncs the backend to it and
// records the outcome in m (which may be nil).
func SyncFunc(b Backend, snapshot func() *State, m *Metrics, clk clock.PassiveClock, log *slog.Logger) func(context.Context) error {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(ctx context.Context) error {
		st := snapshot()
		start := clk.Now()
		err := b.Sync(ctx, st)
		d := clk.Since(start)
		m.observe(st, d, err)
		if err != nil {
			return fmt.Errorf("sync dataplane: %w", err)
		}
		log.Debug("dataplane synced", "service_ports", len(st.Services), "took", d)
		return nil
	}
}
