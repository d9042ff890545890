package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
)

// echoListener greets with "srv\n" and echoes lines, like serve's TCP port.
func echoListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "srv\n")
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					io.WriteString(c, line)
				}
			}()
		}
	}()
	return ln
}

func TestLoopCountsRequestsAndBackends(t *testing.T) {
	ln := echoListener(t)
	for _, persistent := range []bool{false, true} {
		var out, errOut bytes.Buffer
		args := []string{"loop", "--protocol", "tcp", "--interval", "5ms", "--duration", "200ms", ln.Addr().String()}
		if persistent {
			args = append(args, "--persistent", "--connections", "3")
		}
		if code := run(args, &out, &errOut); code != 0 {
			t.Fatalf("persistent=%v: exit %d: %s %s", persistent, code, out.String(), errOut.String())
		}
		last := lastLine(out.String())
		if !strings.HasPrefix(last, "DONE requests=") || !strings.Contains(last, "failures=0 backends=srv:") {
			t.Fatalf("persistent=%v: last line %q", persistent, last)
		}
		if persistent && strings.Count(out.String(), "CONNECTED srv") != 3 {
			t.Fatalf("persistent loop reconnected: %s", out.String())
		}
	}
}

func TestLoopReportsFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every request is refused
	var out, errOut bytes.Buffer
	code := run([]string{"loop", "--protocol", "tcp", "--interval", "5ms", "--duration", "100ms", addr}, &out, &errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, out.String())
	}
	if !strings.Contains(out.String(), "FAIL ") || !strings.Contains(out.String(), " REFUSED") {
		t.Fatalf("no FAIL ... REFUSED line: %s", out.String())
	}
	if last := lastLine(out.String()); !strings.Contains(last, "failures=") || strings.Contains(last, "failures=0 ") {
		t.Fatalf("DONE line %q does not count the failures", last)
	}
}

func TestLoopUsage(t *testing.T) {
	for _, args := range [][]string{
		{"loop"},
		{"loop", "nohostport"},
		{"loop", "--persistent", "--protocol", "http", "1.2.3.4:80"},
		{"loop", "--timeout", "0", "1.2.3.4:80"},
	} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errOut.String())
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
