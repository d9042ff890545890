package kubelet

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeState is what the probes of one running container have found.
type probeState struct {
	started     bool // startup probe passed (or none)
	ready       bool // readiness probe passing (or none and started)
	liveFailed  bool // liveness probe failed failureThreshold times
	startFailed bool // startup probe failed failureThreshold times
}

// probeManager runs the probes of running containers, one goroutine per
// probe, and kicks the pod's worker when a result changes.
type probeManager struct {
	k *Kubelet

	mu      sync.Mutex
	states  map[string]*probeState // by container ID
	cancels map[string]context.CancelFunc
}

func newProbeManager(k *Kubelet) *probeManager {
	return &probeManager{k: k, states: map[string]*probeState{}, cancels: map[string]context.CancelFunc{}}
}

// state returns the probe results of a container (zero value if unknown).
func (m *probeManager) state(id string) probeState {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.states[id]; s != nil {
		return *s
	}
	return probeState{}
}

// ensure starts the probes of a running container once.
func (m *probeManager) ensure(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id string, podIP string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.states[id]; ok {
		return
	}
	st := &probeState{started: c.StartupProbe == nil}
	st.ready = st.started && c.ReadinessProbe == nil
	m.states[id] = st
	pctx, cancel := context.WithCancel(ctx)
	m.cancels[id] = cancel
	uid := pod.UID
	if c.StartupProbe != nil {
		go m.loop(pctx, uid, id, c, c.StartupProbe, podIP, "startup")
	}
	if c.ReadinessProbe != nil {
		go m.loop(pctx, uid, id, c, c.ReadinessProbe, podIP, "readiness")
	}
	if c.LivenessProbe != nil {
		go m.loop(pctx, uid, id, c, c.LivenessProbe, podIP, "liveness")
	}
}

// forget stops the probes of a container that is gone.
func (m *probeManager) forget(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cancel := m.cancels[id]; cancel != nil {
		cancel()
	}
	delete(m.cancels, id)
	delete(m.states, id)
}

func (m *probeManager) loop(ctx context.Context, uid types.UID, id string, c *corev1.Container, p *corev1.Probe, podIP, kind string) {
	period := time.Duration(p.PeriodSeconds) * time.Second
	if period <= 0 {
		period = 10 * time.Second
	}
	timeout := time.Duration(p.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = time.Second
	}
	success, failure := int(p.SuccessThreshold), int(p.FailureThreshold)
	if success <= 0 {
		success = 1
	}
	if failure <= 0 {
		failure = 3
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
	}
	var okRun, failRun int
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		// Readiness and liveness wait for the startup probe to pass.
		if kind == "startup" || m.state(id).started {
			err := m.run(ctx, id, c, p, podIP, timeout)
			if err == nil {
				okRun, failRun = okRun+1, 0
			} else {
				okRun, failRun = 0, failRun+1
				m.k.cfg.Log.Debug("probe failed", "kind", kind, "container", c.Name, "err", err)
			}
			changed := false
			m.mu.Lock()
			st := m.states[id]
			if st == nil {
				m.mu.Unlock()
				return
			}
			switch kind {
			case "startup":
				if okRun >= 1 && !st.started {
					st.started, changed = true, true
					if c.ReadinessProbe == nil {
						st.ready = true
					}
				}
				if failRun >= failure && !st.startFailed {
					st.startFailed, changed = true, true
				}
			case "readiness":
				if okRun >= success && !st.ready {
					st.ready, changed = true, true
				}
				if failRun >= failure && st.ready {
					st.ready, changed = false, true
				}
			case "liveness":
				if failRun >= failure && !st.liveFailed {
					st.liveFailed, changed = true, true
				}
			}
			m.mu.Unlock()
			if changed {
				m.k.kickPod(uid)
			}
			if kind == "startup" && (okRun >= 1 || failRun >= failure) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// run performs one probe; nil is success.
func (m *probeManager) run(ctx context.Context, id string, c *corev1.Container, p *corev1.Probe, podIP string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	h := p.ProbeHandler
	switch {
	case h.Exec != nil:
		code, err := m.k.cfg.Runtime.Exec(ctx, id, h.Exec.Command, false, nil, io.Discard, io.Discard, nil)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("exit code %d", code)
		}
		return nil
	case h.HTTPGet != nil:
		return httpProbe(ctx, c, h.HTTPGet, podIP)
	case h.TCPSocket != nil:
		host := h.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		port, err := resolvePort(h.TCPSocket.Port, c)
		if err != nil {
			return err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case h.GRPC != nil:
		return fmt.Errorf("grpc probes are not supported")
	}
	return fmt.Errorf("probe has no handler")
}

func httpProbe(ctx context.Context, c *corev1.Container, g *corev1.HTTPGetAction, podIP string) error {
	host := g.Host
	if host == "" {
		host = podIP
	}
	port, err := resolvePort(g.Port, c)
	if err != nil {
		return err
	}
	scheme := "http"
	if g.Scheme == corev1.URISchemeHTTPS {
		scheme = "https"
	}
	u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: g.Path}
	if u.Path == "" {
		u.Path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.37")
	for _, h := range g.HTTPHeaders {
		req.Header.Add(h.Name, h.Value)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}
	cl := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	}
	return nil
}

// resolvePort turns a number or a named container port into a number.
func resolvePort(p intstr.IntOrString, c *corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal <= 0 || p.IntVal > 65535 {
			return 0, fmt.Errorf("invalid port %d", p.IntVal)
		}
		return int(p.IntVal), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %q has no port named %q", c.Name, p.StrVal)
}
