package daemon

import (
	"log/slog"
	"os"
	"strings"
	"testing"

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
	if err := setConntrackTimeouts(ns.Path(), slog.New(slog.DiscardHandler)); err != nil {
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
