package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newTestServer(t *testing.T) (*server, chan int) {
	t.Helper()
	exited := make(chan int, 1)
	return &server{
		hostname:     "pod-a",
		notReadyFile: filepath.Join(t.TempDir(), "not-ready"),
		exit:         func(code int) { exited <- code },
		log:          io.Discard,
	}, exited
}

func get(t *testing.T, h http.Handler, target string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	req.RemoteAddr = "10.244.1.7:40000"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestHandlers(t *testing.T) {
	s, _ := newTestServer(t)
	h := s.handler()
	for _, tc := range []struct {
		target string
		code   int
		body   string
	}{
		{"/", 200, "pod-a"},
		{"/hostname", 200, "pod-a"},
		{"/echo?msg=hello%20world", 200, "hello world"},
		{"/echo", 200, ""},
		{"/clientip", 200, "10.244.1.7:40000"},
		{"/healthz", 200, "ok"},
		{"/readyz", 200, "ok"},
		{"/nope", 404, "404 page not found\n"},
		{"/exit?code=300", 400, "code must be 0-255\n"},
		{"/exit?code=x", 400, "code must be 0-255\n"},
	} {
		code, body := get(t, h, tc.target)
		if code != tc.code || body != tc.body {
			t.Errorf("GET %s = %d %q, want %d %q", tc.target, code, body, tc.code, tc.body)
		}
	}
}

func TestReadyzFlips(t *testing.T) {
	s, _ := newTestServer(t)
	h := s.handler()
	if err := os.WriteFile(s.notReadyFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, h, "/readyz"); code != 503 || body != "not ready\n" {
		t.Errorf("GET /readyz with %s = %d %q, want 503", s.notReadyFile, code, body)
	}
	if err := os.Remove(s.notReadyFile); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, h, "/readyz"); code != 200 {
		t.Errorf("GET /readyz after removing %s = %d, want 200", s.notReadyFile, code)
	}
}

func TestExit(t *testing.T) {
	for _, tc := range []struct {
		target string
		code   int
	}{{"/exit", 0}, {"/exit?code=3", 3}} {
		s, exited := newTestServer(t)
		code, body := get(t, s.handler(), tc.target)
		want := "exiting " + string(rune('0'+tc.code))
		if code != 200 || body != want {
			t.Errorf("GET %s = %d %q, want 200 %q", tc.target, code, body, want)
		}
		select {
		case got := <-exited:
			if got != tc.code {
				t.Errorf("GET %s exited with %d, want %d", tc.target, got, tc.code)
			}
		default:
			t.Errorf("GET %s did not exit", tc.target)
		}
	}
}

func TestUDPAnswer(t *testing.T) {
	for payload, want := range map[string]string{
		"hostname":   "pod-a",
		"":           "pod-a",
		"echo hi 1":  "hi 1",
		"echo ":      "",
		"echoes off": "pod-a",
	} {
		if got := string(udpAnswer("pod-a", []byte(payload))); got != want {
			t.Errorf("udpAnswer(%q) = %q, want %q", payload, got, want)
		}
	}
}

// startServer serves on loopback listeners with ephemeral ports and stops the
// server, checking it returned nil, when the test ends.
func startServer(t *testing.T) (s *server, ls listeners) {
	t.Helper()
	s, _ = newTestServer(t)
	var err error
	if ls.http, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if ls.tcp, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if ls.udp, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx, ls) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not return after cancel")
		}
	})
	return s, ls
}

func TestServeTCPEcho(t *testing.T) {
	_, ls := startServer(t)
	c, err := net.DialTimeout("tcp", ls.tcp.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || line != "pod-a\n" {
		t.Fatalf("greeting = %q, %v; want %q", line, err, "pod-a\n")
	}
	if _, err := io.WriteString(c, "ping 1\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || line != "ping 1\n" {
		t.Fatalf("echo = %q, %v; want %q", line, err, "ping 1\n")
	}
}

func TestServeStopsWithOpenConnection(t *testing.T) {
	s, _ := newTestServer(t)
	ls := listeners{}
	var err error
	if ls.tcp, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx, ls) }()
	c, err := net.Dial("tcp", ls.tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return with a client connected")
	}
}

func TestConnect(t *testing.T) {
	_, ls := startServer(t)
	for _, tc := range []struct {
		proto, addr, want string
	}{
		{"tcp", ls.tcp.Addr().String(), "pod-a"},
		{"udp", ls.udp.LocalAddr().String(), "pod-a"},
		{"http", ls.http.Addr().String(), "pod-a"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got, err := connect(ctx, tc.proto, tc.addr)
		cancel()
		if err != nil || got != tc.want {
			t.Errorf("connect %s %s = %q, %v; want %q", tc.proto, tc.addr, got, err, tc.want)
		}
	}
}

// closedPorts returns a TCP and a UDP loopback address nothing listens on.
func closedPorts(t *testing.T) (tcp, udp string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcp = l.Addr().String()
	l.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp = pc.LocalAddr().String()
	pc.Close()
	return tcp, udp
}

func TestConnectFailures(t *testing.T) {
	tcpAddr, udpAddr := closedPorts(t)
	// A UDP socket that reads nothing: datagrams are queued, never answered.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	unready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer unready.Close()

	for _, tc := range []struct {
		proto, addr, reason string
	}{
		{"tcp", tcpAddr, "REFUSED"},
		{"http", tcpAddr, "REFUSED"},
		{"udp", udpAddr, "REFUSED"},
		{"udp", silent.LocalAddr().String(), "TIMEOUT"},
		{"http", strings.TrimPrefix(unready.URL, "http://"), "HTTP 503 not ready"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		got, err := connect(ctx, tc.proto, tc.addr)
		cancel()
		if err == nil {
			t.Errorf("connect %s %s = %q, want an error", tc.proto, tc.addr, got)
			continue
		}
		if r := reason(err); r != tc.reason {
			t.Errorf("connect %s %s: reason %q (%v), want %q", tc.proto, tc.addr, r, err, tc.reason)
		}
	}
}

func TestRunConnect(t *testing.T) {
	_, ls := startServer(t)
	tcpAddr, _ := closedPorts(t)
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"connect", ls.tcp.Addr().String()}, 0, "pod-a\n", ""},
		// Flags after the address, as network-policy tests write them.
		{[]string{"connect", ls.udp.LocalAddr().String(), "--protocol", "udp", "--timeout", "2s"}, 0, "pod-a\n", ""},
		{[]string{"connect", "--protocol=http", ls.http.Addr().String()}, 0, "pod-a\n", ""},
		{[]string{"connect", tcpAddr, "--timeout", "1s"}, 1, "", "REFUSED\n"},
		{[]string{"connect", tcpAddr, "--protocol", "sctp"}, 2, "", "capstan-echo: usage: unknown protocol \"sctp\" (tcp, udp or http)\n"},
		{[]string{"connect", "nohost"}, 2, "", "capstan-echo: usage: \"nohost\" is not HOST:PORT\n"},
		{[]string{"connect"}, 2, "", "capstan-echo: connect takes one HOST:PORT\n"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code || stdout.String() != tc.stdout || stderr.String() != tc.stderr {
			t.Errorf("run %q = %d, stdout %q, stderr %q; want %d, %q, %q",
				tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}

func TestRunSimpleCommands(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
	}{
		{[]string{"hostname"}, 0, host + "\n"},
		{[]string{"crash"}, 1, "crashing with code 1 after 0s\n"},
		{[]string{"crash", "--code", "7", "--after", "10ms"}, 7, "crashing with code 7 after 10ms\n"},
		{[]string{"crash", "--code", "256"}, 2, ""},
		{[]string{"hostname", "extra"}, 2, ""},
		{[]string{"frobnicate"}, 2, ""},
		{nil, 2, ""},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != tc.code || stdout.String() != tc.stdout {
			t.Errorf("run %q = %d, stdout %q (stderr %q); want %d, %q",
				tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout)
		}
	}
}
