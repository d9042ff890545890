package iptables

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testNS is a network namespace held by a file descriptor of the test process. It has no name
// anywhere, so parallel tests cannot collide, and it disappears with the last reference even
// if the test dies: nothing leaks into the host.
type testNS struct {
	name string
	fd   int
	nl   *netlink.Handle
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and programs iptables in them")
	}
}

// newNS creates a namespace with lo up.
func newNS(t *testing.T, name string) *testNS {
	t.Helper()
	requireRoot(t)
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
	n := &testNS{name: name, fd: r.fd}
	t.Cleanup(func() { unix.Close(n.fd) })
	nl, err := netlink.NewHandleAt(netns.NsHandle(n.fd))
	if err != nil {
		t.Fatalf("netlink in %s: %v", name, err)
	}
	t.Cleanup(nl.Close)
	n.nl = nl
	must(t, "lo up", nl.LinkSetUp(n.link(t, "lo")))
	return n
}

// path names the namespace for nsenter: the test process's descriptor, through /proc.
func (n *testNS) path() string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), n.fd) }

// do runs fn on a thread inside the namespace; sockets it opens stay in the namespace.
func (n *testNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// sysctl writes net.* settings, given as "ipv4/ip_forward", "1", ...
func (n *testNS) sysctl(t *testing.T, kv ...string) {
	t.Helper()
	err := n.do(func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := os.WriteFile("/proc/sys/net/"+kv[i], []byte(kv[i+1]), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	must(t, "sysctl in "+n.name, err)
}

func (n *testNS) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	must(t, name+" in "+n.name, err)
	return l
}

func (n *testNS) addAddr(t *testing.T, ifname string, p netip.Prefix) {
	t.Helper()
	a := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	must(t, "address "+p.String(), n.nl.AddrAdd(n.link(t, ifname), &netlink.Addr{IPNet: a}))
}

// route adds dst via gw (or on link, when gw is invalid) through ifname.
func (n *testNS) route(t *testing.T, ifname string, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	r := &netlink.Route{LinkIndex: n.link(t, ifname).Attrs().Index, Dst: ipNet(dst)}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	must(t, "route "+dst.String()+" in "+n.name, n.nl.RouteAdd(r))
}

// veth links a (interface aName) and b (interface bName) and brings both ends up.
func veth(t *testing.T, a *testNS, aName string, b *testNS, bName string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName,
		PeerNamespace: netlink.NsFd(b.fd)}
	must(t, "veth "+aName, a.nl.LinkAdd(v))
	must(t, "up "+aName, a.nl.LinkSetUp(a.link(t, aName)))
	must(t, "up "+bName, b.nl.LinkSetUp(b.link(t, bName)))
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// ipNet is a prefix as a route destination (masked).
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// serve answers on addr in ns, over TCP (a line "<name> <peer>" per connection, then close) or
// UDP (the same line back for each datagram), until the test ends.
func serve(t *testing.T, ns *testNS, network, addr, name string) {
	t.Helper()
	var (
		ln net.Listener
		pc net.PacketConn
	)
	err := ns.do(func() (err error) {
		if network == "tcp" {
			ln, err = net.Listen("tcp4", addr)
		} else {
			pc, err = net.ListenPacket("udp4", addr)
		}
		return err
	})
	must(t, "listen "+network+" "+addr+" in "+ns.name, err)
	if ln != nil {
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
				c.Close()
			}
		}()
		return
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fmt.Appendf(nil, "%s %s\n", name, from), from)
		}
	}()
}

// reply is what a test server answered: who it is and whom it saw.
type reply struct {
	server string
	peer   netip.AddrPort
}

// ask connects from ns to dst and reads the server's line.
func ask(ns *testNS, network, dst string, timeout time.Duration) (reply, error) {
	var line string
	err := ns.do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, network+"4", dst)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		if network == "udp" {
			if _, err := c.Write([]byte("hello")); err != nil {
				return err
			}
		}
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if err != nil {
		return reply{}, err
	}
	name, peer, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		return reply{}, fmt.Errorf("bad reply %q", line)
	}
	ap, err := netip.ParseAddrPort(peer)
	return reply{server: name, peer: ap}, err
}
