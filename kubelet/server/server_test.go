package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	clientpf "k8s.io/client-go/tools/portforward"
	clientrc "k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/capstan-net/capstan/control/pki"
	"github.com/capstan-net/capstan/kubelet/logs"
)

// fakePods serves pod default/web (uid "uid-1") with container "app".
type fakePods struct {
	dir  string
	done chan struct{} // closed when the current instance exits

	mu    sync.Mutex
	execs []string // "name uid container cmd..."
}

func (f *fakePods) logPath(previous bool) string {
	if previous {
		return filepath.Join(f.dir, "0.log")
	}
	return filepath.Join(f.dir, "1.log")
}

func (f *fakePods) ContainerLog(ctx context.Context, namespace, pod, container string, previous bool) (string, <-chan struct{}, error) {
	if namespace != "default" || pod != "web" || container != "app" {
		return "", nil, fmt.Errorf("no container %s: %w", container, ErrNotFound)
	}
	if previous {
		done := make(chan struct{})
		close(done)
		return f.logPath(true), done, nil
	}
	return f.logPath(false), f.done, nil
}

func (f *fakePods) PodUID(namespace, pod string) (types.UID, error) {
	if namespace != "default" || pod != "web" {
		return "", ErrNotFound
	}
	return "uid-1", nil
}

func (f *fakePods) ExecInContainer(ctx context.Context, name, uid, container string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	f.mu.Lock()
	f.execs = append(f.execs, strings.Join(append([]string{name, uid, container}, cmd...), " "))
	f.mu.Unlock()
	switch cmd[0] {
	case "echo":
		fmt.Fprintln(out, strings.Join(cmd[1:], " "))
		return nil
	case "cat":
		_, err := io.Copy(out, in)
		return err
	case "fail":
		fmt.Fprintln(errw, "oops")
		return exec.CodeExitError{Err: errors.New("exit status 3"), Code: 3}
	}
	return fmt.Errorf("%s: command not found", cmd[0])
}

func (f *fakePods) AttachContainer(ctx context.Context, name, uid, container string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	fmt.Fprintf(out, "attached to %s %s\n", name, container)
	_, err := io.Copy(out, in)
	return err
}

func (f *fakePods) PortForward(ctx context.Context, name, uid string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer c.Close()
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(c, stream); errc <- err }()
	go func() { _, err := io.Copy(stream, c); errc <- err }()
	return <-errc
}

// env is a running server with clients.
type env struct {
	pods   *fakePods
	url    string
	master *rest.Config // system:masters, as the API server
	other  *rest.Config // a valid certificate outside system:masters
}

func start(t *testing.T) *env {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.NewKeyPair("node-1", nil, true, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	pods := &fakePods{dir: t.TempDir(), done: make(chan struct{})}
	srv := New(Config{Cert: cert, ClientCAs: pool, Pods: pods})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	})
	client := func(cn string, orgs ...string) *rest.Config {
		c, k, err := ca.NewKeyPair(cn, orgs, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return &rest.Config{Host: "https://" + ln.Addr().String(), TLSClientConfig: rest.TLSClientConfig{CAData: ca.CertPEM, CertData: c, KeyData: k}}
	}
	return &env{
		pods:   pods,
		url:    "https://" + ln.Addr().String(),
		master: client("capstan:apiserver", GroupMasters),
		other:  client("someone", "system:nodes"),
	}
}

func httpClient(t *testing.T, cfg *rest.Config) *http.Client {
	t.Helper()
	tc, err := rest.TLSConfigFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
}

// writeLog appends lines to a log file through the logs writer.
func writeLog(t *testing.T, path string, now func() time.Time, stream logs.Stream, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := logs.NewWriter(f, now).Copy(stream, strings.NewReader(text)); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestContainerLogs(t *testing.T) {
	e := start(t)
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	at := func(d time.Duration) func() time.Time { return func() time.Time { return t0.Add(d) } }
	writeLog(t, e.pods.logPath(false), at(0), logs.Stdout, "one\n")
	writeLog(t, e.pods.logPath(false), at(time.Second), logs.Stderr, "two\n")
	writeLog(t, e.pods.logPath(false), at(59*time.Minute+30*time.Second), logs.Stdout, "three\n")
	writeLog(t, e.pods.logPath(true), at(0), logs.Stdout, "before restart\n")
	c := httpClient(t, e.master)
	base := e.url + "/containerLogs/default/web/app"
	for _, tc := range []struct {
		query string
		code  int
		body  string
	}{
		{"", 200, "one\ntwo\nthree\n"},
		{"?tailLines=1", 200, "three\n"},
		{"?tail=2", 200, "two\nthree\n"},
		{"?tail=all", 200, "one\ntwo\nthree\n"},
		{"?stream=Stderr", 200, "two\n"},
		{"?limitBytes=6", 200, "one\ntw"},
		{"?timestamps=true&tailLines=1", 200, t0.Add(59*time.Minute+30*time.Second).Format("2006-01-02T15:04:05.000000000Z07:00") + " three\n"},
		{"?sinceTime=" + url.QueryEscape(t0.Add(time.Second).Format(time.RFC3339)), 200, "two\nthree\n"},
		{"?sinceSeconds=60", 200, "three\n"},
		{"?previous=true", 200, "before restart\n"},
		{"?follow=true&previous=true", 200, "before restart\n"},
		{"?tailLines=-1", 400, "tailLines"},
		{"?follow=maybe", 400, "follow"},
		{"?sinceSeconds=1&sinceTime=" + url.QueryEscape(t0.Format(time.RFC3339)), 400, "at most one"},
		{"?stream=Both", 400, "stream"},
	} {
		code, body := get(t, c, base+tc.query)
		if code != tc.code || (code == 200 && body != tc.body) || (code != 200 && !strings.Contains(body, tc.body)) {
			t.Errorf("%s: %d %q, want %d %q", tc.query, code, body, tc.code, tc.body)
		}
	}

	code, body := get(t, c, e.url+"/containerLogs/default/web/db")
	var st metav1.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil || code != 404 || st.Code != 404 || !strings.Contains(st.Message, "db") {
		t.Errorf("unknown container: %d %s", code, body)
	}
	if code, _ := get(t, c, e.url+"/containerLogs/default/web"); code != 404 {
		t.Errorf("no container in path: %d", code)
	}
}

func TestContainerLogsFollow(t *testing.T) {
	e := start(t)
	path := e.pods.logPath(false)
	writeLog(t, path, time.Now, logs.Stdout, "first\n")
	resp, err := httpClient(t, e.master).Get(e.url + "/containerLogs/default/web/app?follow=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func() string {
		select {
		case l, ok := <-lines:
			if !ok {
				return "<end>"
			}
			return l
		case <-time.After(5 * time.Second):
			t.Fatal("no line within 5s")
		}
		return ""
	}
	if l := next(); l != "first" {
		t.Fatalf("got %q", l)
	}
	writeLog(t, path, time.Now, logs.Stderr, "second\n")
	if l := next(); l != "second" {
		t.Fatalf("got %q", l)
	}
	writeLog(t, path, time.Now, logs.Stdout, "last\n")
	close(e.pods.done)
	if l := next(); l != "last" {
		t.Fatalf("got %q", l)
	}
	if l := next(); l != "<end>" {
		t.Fatalf("follow did not end with the container: %q", l)
	}
}

func TestAuthorization(t *testing.T) {
	e := start(t)
	writeLog(t, e.pods.logPath(false), time.Now, logs.Stdout, "secret\n")
	code, body := get(t, httpClient(t, e.other), e.url+"/containerLogs/default/web/app")
	if code != http.StatusForbidden || strings.Contains(body, "secret") || !strings.Contains(body, "someone") {
		t.Errorf("other user: %d %s", code, body)
	}
	if code, _ := get(t, httpClient(t, e.other), e.url+"/healthz"); code != 200 {
		t.Errorf("healthz for a cluster certificate: %d", code)
	}
	// Without a client certificate the handshake fails.
	noCert := *e.master
	noCert.TLSClientConfig.CertData, noCert.TLSClientConfig.KeyData = nil, nil
	if _, err := httpClient(t, &noCert).Get(e.url + "/healthz"); err == nil {
		t.Error("served a client without a certificate")
	}
	// A certificate from another CA is refused too.
	other, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := other.NewKeyPair("capstan:apiserver", []string{GroupMasters}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	foreign := *e.master
	foreign.TLSClientConfig.CertData, foreign.TLSClientConfig.KeyData = c, k
	if _, err := httpClient(t, &foreign).Get(e.url + "/healthz"); err == nil {
		t.Error("served a certificate from another CA")
	}
}

func spdyExec(t *testing.T, e *env, cfg *rest.Config, path string, opts clientrc.StreamOptions) (stdout, stderr string, err error) {
	t.Helper()
	u, _ := url.Parse(e.url + path)
	ex, err := clientrc.NewSPDYExecutor(cfg, "POST", u)
	if err != nil {
		t.Fatal(err)
	}
	// The client must open the streams the query asks for, no more.
	var o, se bytes.Buffer
	if u.Query().Get("output") == "1" {
		opts.Stdout = &o
	}
	if u.Query().Get("error") == "1" {
		opts.Stderr = &se
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = ex.StreamWithContext(ctx, opts)
	return o.String(), se.String(), err
}

func TestExec(t *testing.T) {
	e := start(t)
	out, _, err := spdyExec(t, e, e.master, "/exec/default/web/app?command=echo&command=hello&command=world&output=1", clientrc.StreamOptions{})
	if err != nil || out != "hello world\n" {
		t.Errorf("echo: %q, %v", out, err)
	}
	if got := e.pods.execs[0]; got != "default/web uid-1 app echo hello world" {
		t.Errorf("executor got %q", got)
	}

	out, _, err = spdyExec(t, e, e.master, "/exec/default/web/uid-1/app?command=cat&input=1&output=1",
		clientrc.StreamOptions{Stdin: strings.NewReader("from stdin")})
	if err != nil || out != "from stdin" {
		t.Errorf("cat: %q, %v", out, err)
	}

	_, errOut, err := spdyExec(t, e, e.master, "/exec/default/web/app?command=fail&output=1&error=1", clientrc.StreamOptions{})
	var exit exec.CodeExitError
	if !errors.As(err, &exit) || exit.Code != 3 || errOut != "oops\n" {
		t.Errorf("fail: stderr %q, err %#v, want exit code 3", errOut, err)
	}

	for _, tc := range []struct{ path, want string }{
		{"/exec/default/nope/app?command=echo&output=1", "not found"},
		{"/exec/default/web/uid-2/app?command=echo&output=1", "not found"},
		{"/exec/default/web/app?output=1", "no command"},
		{"/exec/default/web/app?command=echo", "at least 1 of stdin, stdout, stderr"},
	} {
		if _, _, err := spdyExec(t, e, e.master, tc.path, clientrc.StreamOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.path, err, tc.want)
		}
	}
	if _, _, err := spdyExec(t, e, e.other, "/exec/default/web/app?command=echo&output=1", clientrc.StreamOptions{}); err == nil || !strings.Contains(err.Error(), "may not use") {
		t.Errorf("other user: %v", err)
	}
}

func TestAttach(t *testing.T) {
	e := start(t)
	out, _, err := spdyExec(t, e, e.master, "/attach/default/web/app?input=1&output=1", clientrc.StreamOptions{Stdin: strings.NewReader("typed")})
	if err != nil || out != "attached to default/web app\ntyped" {
		t.Errorf("attach: %q, %v", out, err)
	}
}

// echoServer answers each connection with what it reads, upper-cased.
func echoServer(t *testing.T) int {
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
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintln(c, strings.ToUpper(sc.Text()))
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestPortForward(t *testing.T) {
	e := start(t)
	port := echoServer(t)
	rt, upgrader, err := spdy.RoundTripperFor(e.master)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(e.url + "/portForward/default/web")
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	stop, ready := make(chan struct{}), make(chan struct{})
	pf, err := clientpf.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- pf.ForwardPorts() }()
	defer func() {
		close(stop)
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("port-forward: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("port-forward not ready")
	}
	ports, err := pf.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local))))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(c, "ping")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "PING\n" {
		t.Errorf("through the forward: %q, %v", line, err)
	}
}

func TestWebsocketPortForwardNeedsPort(t *testing.T) {
	e := start(t)
	req, _ := http.NewRequest("GET", e.url+"/portForward/default/web", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := httpClient(t, e.master).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || !strings.Contains(string(b), "port") {
		t.Errorf("%d %s", resp.StatusCode, b)
	}
}
