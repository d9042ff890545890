package daemon

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/capstan-net/capstan/dataplane/proxyhealth"
	"github.com/capstan-net/capstan/internal/netnstest"
)

func TestConntrackTimeoutsInTheNodeNetnsOnly(t *testing.T) {
	requireRoot(t)
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait"); err != nil {
		t.Skip("no netfilter conntrack on this machine")
	}
	read := func() string {
		b, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait")
		return strings.TrimSpace(string(b))
	}
	hostBefore := read()
	ns := netnstest.New(t, "ctt")
	if err := setConntrackTimeouts(ns.Path(), "/proc", slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := ns.Do(func() error { got = read(); return nil }); err != nil {
		t.Fatal(err)
	}
	if got != "3600" {
		t.Errorf("close_wait timeout in the node's netns %s, want kube-proxy's 3600", got)
	}
	if h := read(); h != hostBefore {
		t.Errorf("host's close_wait timeout changed from %s to %s", hostBefore, h)
	}
}

// In mode none the upstream kube-proxy runs beside the daemon and owns its ports.
func TestModeNoneLeavesKubeProxyPorts(t *testing.T) {
	for _, tc := range []struct {
		mode, healthz, metrics   string
		wantHealthz, wantMetrics string
	}{
		{ModeNone, proxyhealth.HealthzAddr, proxyhealth.StatusAddr, "", ""},
		{ModeNone, "0.0.0.0:9876", "127.0.0.1:9964", "0.0.0.0:9876", "127.0.0.1:9964"},
		{ModeEBPF, proxyhealth.HealthzAddr, proxyhealth.StatusAddr, proxyhealth.HealthzAddr, proxyhealth.StatusAddr},
	} {
		c := Config{NodeName: "n", Kubeconfig: "k", Mode: tc.mode, HealthzAddr: tc.healthz, MetricsAddr: tc.metrics}
		if err := c.setDefaults(); err != nil {
			t.Fatal(err)
		}
		if c.HealthzAddr != tc.wantHealthz || c.MetricsAddr != tc.wantMetrics {
			t.Errorf("mode %s with %q, %q: serves %q, %q; want %q, %q", tc.mode, tc.healthz, tc.metrics,
				c.HealthzAddr, c.MetricsAddr, tc.wantHealthz, tc.wantMetrics)
		}
	}
}
