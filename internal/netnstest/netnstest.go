// Package netnstest gives tests network namespaces of their own, with helpers to wire them
// together (veth pairs, addresses, routes, sysctls) and to run code inside them.
//
// It is meant for tests only: nothing but _test.go files should import it.
package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a network namespace held only by a file descriptor of the test process. It has no
// name anywhere, so parallel tests cannot collide, and it disappears with its last reference
// (the descriptor, closed when the test ends, and any socket still open in it) even if the
// test dies: nothing leaks into the host.
type NS struct {
	Name string          // for messages only
	FD   int             // the namespace, open read-only
	NL   *netlink.Handle // netlink inside the namespace
}

// New creates a namespace with lo up; it is closed when the test ends. The test is skipped
// when not run as root.
func New(t testing.TB, name string) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// This thread ends in the new namespace; Go retires it with the goroutine since it
		// stays locked.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("unshare: %w", err)}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		ch <- result{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("new netns %s: %v", name, r.err)
	}
	n := &NS{Name: name, FD: r.fd}
	t.Cleanup(func() { unix.Close(n.FD) })
	nl, err := netlink.NewHandleAt(netns.NsHandle(n.FD))
	if err != nil {
		t.Fatalf("netlink in %s: %v", name, err)
	}
	t.Cleanup(nl.Close)
	n.NL = nl
	must(t, "lo up in "+name, nl.LinkSetUp(n.Link(t, "lo")))
	return n
}

// Path names the namespace for nsenter and the like: the test process's descriptor, through
// /proc.
func (n *NS) Path() string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), n.FD) }

// Do runs fn on a thread inside the namespace: sockets it opens, sysctls it writes and
// ifindexes it resolves belong to the namespace, and sockets stay there after fn returns.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Setns(n.FD, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Sysctl writes net.* settings, given as pairs: "ipv4/ip_forward", "1", ...
func (n *NS) Sysctl(t testing.TB, kv ...string) {
	t.Helper()
	err := n.Do(func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := os.WriteFile("/proc/sys/net/"+kv[i], []byte(kv[i+1]), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	must(t, "sysctl in "+n.Name, err)
}

// Link finds the interface called name.
func (n *NS) Link(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := n.NL.LinkByName(name)
	must(t, name+" in "+n.Name, err)
	return l
}

// AddAddr puts address p (its address and prefix length, not masked) on ifname.
func (n *NS) AddAddr(t testing.TB, ifname string, p netip.Prefix) {
	t.Helper()
	a := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	must(t, "address "+p.String()+" in "+n.Name, n.NL.AddrAdd(n.Link(t, ifname), &netlink.Addr{IPNet: a}))
}

// Route adds dst via gw (or on link, when gw is invalid) through ifname.
func (n *NS) Route(t testing.TB, ifname string, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	r := &netlink.Route{LinkIndex: n.Link(t, ifname).Attrs().Index, Dst: IPNet(dst)}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	must(t, "route "+dst.String()+" in "+n.Name, n.NL.RouteAdd(r))
}

// Veth links a (interface aName) and b (interface bName) and brings both ends up.
func Veth(t testing.TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName,
		PeerNamespace: netlink.NsFd(b.FD)}
	must(t, "veth "+aName+" in "+a.Name, a.NL.LinkAdd(v))
	must(t, "up "+aName, a.NL.LinkSetUp(a.Link(t, aName)))
	must(t, "up "+bName, b.NL.LinkSetUp(b.Link(t, bName)))
}

// IPNet is a prefix as a route destination (masked).
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
