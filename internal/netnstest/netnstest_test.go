package netnstest

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// Two namespaces on a veth pair, a route from one to an address of the other, and a TCP
// connection across: each runs in its own namespace and nothing touches the host's.
func TestWiring(t *testing.T) {
	t.Parallel()
	a, b := New(t, "a"), New(t, "b")
	Veth(t, a, "va", b, "vb")
	a.AddAddr(t, "va", netip.MustParsePrefix("192.168.99.1/30"))
	b.AddAddr(t, "vb", netip.MustParsePrefix("192.168.99.2/30"))
	b.AddAddr(t, "lo", netip.MustParsePrefix("10.99.0.1/32"))
	a.Route(t, "va", netip.MustParsePrefix("10.99.0.0/24"), netip.MustParseAddr("192.168.99.2"))
	b.Route(t, "vb", netip.MustParsePrefix("192.168.100.0/24"), netip.Addr{})
	b.Sysctl(t, "ipv4/ip_forward", "1")

	var fwd []byte
	err := b.Do(func() (err error) {
		fwd, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	})
	if err != nil || strings.TrimSpace(string(fwd)) != "1" {
		t.Fatalf("ip_forward in b: %q, %v", fwd, err)
	}
	if _, err := os.Stat(a.Path()); err != nil {
		t.Fatal(err)
	}

	var ln net.Listener
	if err := b.Do(func() (err error) {
		ln, err = net.Listen("tcp4", "10.99.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	err = a.Do(func() error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("connect from a to b: %v", err)
	}
	// The host has no route there.
	if c, err := net.DialTimeout("tcp4", ln.Addr().String(), 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("reached b's address from the test's own namespace")
	}
}

func TestIPNet(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.1.7/24": "10.244.1.0/24",
		"0.0.0.0/0":     "0.0.0.0/0",
		"fd00::1/64":    "fd00::/64",
	} {
		if got := IPNet(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("IPNet(%s) = %s, want %s", in, got, want)
		}
	}
}
