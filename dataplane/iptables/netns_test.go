package iptables

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/capstan-net/capstan/internal/netnstest"
)

// must fails the test when err is set, saying what failed.
func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// serve answers on addr in ns, over TCP (a line "<name> <peer>" per connection, then close) or
// UDP (the same line back for each datagram), until the test ends.
func serve(t *testing.T, ns *netnstest.NS, network, addr, name string) {
	t.Helper()
	var (
		ln net.Listener
		pc net.PacketConn
	)
	err := ns.Do(func() (err error) {
		if network == "tcp" {
			ln, err = net.Listen("tcp4", addr)
		} else {
			pc, err = net.ListenPacket("udp4", addr)
		}
		return err
	})
	must(t, "listen "+network+" "+addr+" in "+ns.Name, err)
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
func ask(ns *netnstest.NS, network, dst string, timeout time.Duration) (reply, error) {
	var line string
	err := ns.Do(func() error {
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
