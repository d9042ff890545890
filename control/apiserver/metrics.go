package apiserver

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics counts requests the way kube-apiserver names them.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	watchers *prometheus.GaugeVec
}

// NewMetrics makes a registry of the API server's own metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "apiserver_request_total", Help: "Requests by verb, group, resource and HTTP code.",
		}, []string{"verb", "group", "resource", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "apiserver_request_duration_seconds", Help: "Request latency by verb and resource (watches excluded).",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"verb", "group", "resource"}),
		watchers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "apiserver_registered_watchers", Help: "Open watches by group and resource.",
		}, []string{"group", "resource"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.watchers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

type labelsKey struct{}

type reqLabels struct{ verb, group, resource string }

type codeWriter struct {
	http.ResponseWriter
	code int
}

func (w *codeWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (upgrades).
func (w *codeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack hands the connection to an upgrading proxy; it counts as 101.
func (w *codeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.code == 0 {
		w.code = http.StatusSwitchingProtocols
	}
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *codeWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (m *Metrics) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		l := &reqLabels{verb: "other"}
		cw := &codeWriter{ResponseWriter: w}
		next.ServeHTTP(cw, r.WithContext(context.WithValue(r.Context(), labelsKey{}, l)))
		if cw.code == 0 {
			cw.code = http.StatusOK
		}
		m.requests.WithLabelValues(l.verb, l.group, l.resource, strconv.Itoa(cw.code)).Inc()
		if l.verb != "watch" {
			m.latency.WithLabelValues(l.verb, l.group, l.resource).Observe(time.Since(start).Seconds())
		} else {
			m.watchers.WithLabelValues(l.group, l.resource).Dec()
		}
	})
}

// label records what a request was once it has been parsed.
func (m *Metrics) label(r *http.Request, ri reqInfo) {
	if l, ok := r.Context().Value(labelsKey{}).(*reqLabels); ok {
		l.verb, l.group, l.resource = ri.verb, ri.gv.Group, ri.res.Name
		if ri.verb == "watch" {
			m.watchers.WithLabelValues(l.group, l.resource).Inc()
		}
	}
}
