package apiserver

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
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	clientpf "k8s.io/client-go/tools/portforward"
	clientrc "k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/capstan-net/capstan/control/pki"
	"github.com/capstan-net/capstan/control/storage"
	kubeletserver "github.com/capstan-net/capstan/kubelet/server"
)

// agentPods is the agent side for the stream tests: exec runs "echo",
// "cat" and "exit N"; port-forward dials the port on loopback.
type agentPods struct{}

func (agentPods) ContainerLog(ctx context.Context, namespace, pod, container string, previous bool) (string, <-chan struct{}, error) {
	return "", nil, kubeletserver.ErrNotFound
}

func (agentPods) PodUID(namespace, pod string) (types.UID, error) {
	if pod != "web" {
		return "", kubeletserver.ErrNotFound
	}
	return "uid-web", nil
}

func (agentPods) ExecInContainer(ctx context.Context, name, uid, container string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	switch cmd[0] {
	case "echo":
		fmt.Fprintf(out, "%s in %s/%s: %s\n", uid, name, container, strings.Join(cmd[1:], " "))
		return nil
	case "cat":
		_, err := io.Copy(out, in)
		return err
	case "exit":
		code, _ := strconv.Atoi(cmd[1])
		fmt.Fprintln(errw, "exiting")
		return exec.CodeExitError{Err: fmt.Errorf("exit status %d", code), Code: code}
	}
	return fmt.Errorf("%s: not found", cmd[0])
}

func (agentPods) AttachContainer(ctx context.Context, name, uid, container string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	fmt.Fprintf(out, "attached to %s tty=%v\n", container, tty)
	_, err := io.Copy(out, in)
	return err
}

func (agentPods) PortForward(ctx context.Context, name, uid string, port int32, stream io.ReadWriteCloser) error {
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

// proxyEnv is an agent (the real kubelet/server with a fake runtime, and a
// scripted containerLogs) behind NodeProxy behind a front server standing
// in for the API server's handler chain.
type proxyEnv struct {
	front *httptest.Server
	nodes map[string]*corev1.Node
	pods  map[string]*corev1.Pod

	mu       sync.Mutex
	requests []string // RequestURI of each agent request
	users    []string // client certificate CN of each agent request

	logs func(w http.ResponseWriter, r *http.Request)
}

func (e *proxyEnv) lastRequest(t *testing.T) string {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.requests) == 0 {
		t.Fatal("the agent got no request")
	}
	return e.requests[len(e.requests)-1]
}

// wrappedWriter stands for the API server's writer wrappers.
type wrappedWriter struct{ http.ResponseWriter }

func (w wrappedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w wrappedWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

func startProxy(t *testing.T) *proxyEnv {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	keyPair := func(cn string, orgs []string, server bool, hosts []string) tls.Certificate {
		c, k, err := ca.NewKeyPair(cn, orgs, server, hosts)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	e := &proxyEnv{nodes: map[string]*corev1.Node{}, pods: map[string]*corev1.Pod{}}

	agent := kubeletserver.New(kubeletserver.Config{Cert: keyPair("node-1", nil, true, []string{"127.0.0.1"}), ClientCAs: pool, Pods: agentPods{}})
	agentHandler := agent.Handler()
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.requests = append(e.requests, r.URL.RequestURI())
		e.users = append(e.users, r.TLS.PeerCertificates[0].Subject.CommonName)
		e.mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/containerLogs/") && e.logs != nil {
			e.logs(w, r)
			return
		}
		agentHandler.ServeHTTP(w, r)
	}))
	backend.TLS = agent.TLSConfig()
	backend.StartTLS()
	t.Cleanup(backend.Close)
	port := backend.Listener.Addr().(*net.TCPAddr).Port

	e.nodes["node-1"] = &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
		Status: corev1.NodeStatus{
			Addresses:       []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "node-1"}, {Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(port)}},
		},
	}
	e.nodes["no-ip"] = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "no-ip"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "no-ip"}}}}
	pod := func(name, node string, containers ...string) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Spec: corev1.PodSpec{NodeName: node}}
		for _, c := range containers {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c})
		}
		e.pods[name] = p
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	e.nodes["down"] = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "down"}, Status: corev1.NodeStatus{
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(closed.Addr().(*net.TCPAddr).Port)}},
	}}
	pod("web", "node-1", "app")
	pod("stranded", "down", "app")
	pod("two", "node-1", "app", "sidecar")
	pod("lost", "no-ip", "app")
	pod("orphan", "gone", "app")

	nodeProxy := NewNodeProxy(NodeProxyConfig{
		Node: func(ctx context.Context, name string) (*corev1.Node, error) {
			if n, ok := e.nodes[name]; ok {
				return n, nil
			}
			return nil, fmt.Errorf("get %s: %w", name, storage.ErrNotFound)
		},
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{keyPair("capstan:apiserver", []string{"system:masters"}, false, nil)}},
	})
	e.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// /api/v1/namespaces/ns/pods/<name>/<sub>
		parts := strings.Split(r.URL.Path, "/")
		var err error = notFoundPath(r.URL.Path)
		if len(parts) == 8 {
			if p, ok := e.pods[parts[6]]; ok {
				err = nodeProxy(wrappedWriter{w}, r, p, parts[7])
			}
		}
		if err != nil {
			st := toStatusError(err, nil, "").ErrStatus
			st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
			writeJSON(w, int(st.Code), &st)
		}
	}))
	t.Cleanup(e.front.Close)
	return e
}

func (e *proxyEnv) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(e.front.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestNodeProxyLogLocation(t *testing.T) {
	e := startProxy(t)
	e.logs = func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello\n") }
	for _, tc := range []struct{ query, agent string }{
		{"", "/containerLogs/ns/web/app"},
		{"?container=app&follow=true&previous=true&timestamps=true&tailLines=5&sinceSeconds=10&limitBytes=100",
			"/containerLogs/ns/web/app?follow=true&limitBytes=100&previous=true&sinceSeconds=10&tailLines=5&timestamps=true"},
		{"?sinceTime=2026-01-02T03:04:05Z&stream=Stderr", "/containerLogs/ns/web/app?sinceTime=2026-01-02T03%3A04%3A05Z&stream=Stderr"},
	} {
		code, body := e.get(t, "/api/v1/namespaces/ns/pods/web/log"+tc.query)
		if code != 200 || body != "hello\n" {
			t.Errorf("%s: %d %q", tc.query, code, body)
		}
		if got := e.lastRequest(t); got != tc.agent {
			t.Errorf("%s: agent got %s, want %s", tc.query, got, tc.agent)
		}
	}
	code, body := e.get(t, "/api/v1/namespaces/ns/pods/two/log?container=sidecar")
	if code != 200 || e.lastRequest(t) != "/containerLogs/ns/two/sidecar" {
		t.Errorf("sidecar: %d %s, agent got %s", code, body, e.lastRequest(t))
	}
	if e.users[0] != "capstan:apiserver" {
		t.Errorf("the agent saw user %q", e.users[0])
	}
}

func TestNodeProxyLogFollowStreams(t *testing.T) {
	e := startProxy(t)
	release := make(chan struct{})
	e.logs = func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "line 1\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "line 2\n")
	}
	// The timeout also fails a proxy that holds back the headers.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(e.front.URL + "/api/v1/namespaces/ns/pods/web/log?follow=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	r := bufio.NewReader(resp.Body)
	got := make(chan string, 1)
	go func() { l, _ := r.ReadString('\n'); got <- l }()
	select {
	case l := <-got:
		if l != "line 1\n" {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first line did not stream before the agent finished")
	}
	close(release)
	if rest, _ := io.ReadAll(r); string(rest) != "line 2\n" {
		t.Errorf("rest %q", rest)
	}
}

func status(t *testing.T, body string) metav1.Status {
	t.Helper()
	var st metav1.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("not a Status: %s", body)
	}
	return st
}

func TestNodeProxyErrors(t *testing.T) {
	e := startProxy(t)
	e.logs = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","code":404,"reason":"NotFound","message":"no log for container \"app\" yet"}`)
	}
	for _, tc := range []struct {
		path string
		code int
		msg  []string
	}{
		{"/api/v1/namespaces/ns/pods/two/log", 400, []string{"choose one of", "app", "sidecar"}},
		{"/api/v1/namespaces/ns/pods/web/log?container=db", 400, []string{"db", "app"}},
		{"/api/v1/namespaces/ns/pods/web/exec?command=ls&stdout=true&container=db", 400, []string{"db", "app"}},
		{"/api/v1/namespaces/ns/pods/web/exec?stdout=true", 400, []string{"command"}},
		{"/api/v1/namespaces/ns/pods/web/exec?command=ls", 400, []string{"stdin, stdout, stderr"}},
		{"/api/v1/namespaces/ns/pods/web/log?tailLines=-1", 400, []string{"tailLines"}},
		{"/api/v1/namespaces/ns/pods/web/log?tailLines=x", 400, []string{"invalid"}},
		{"/api/v1/namespaces/ns/pods/lost/log", 503, []string{"no-ip", "InternalIP"}},
		{"/api/v1/namespaces/ns/pods/orphan/exec?command=ls&stdout=true", 503, []string{"gone", "does not exist"}},
		{"/api/v1/namespaces/ns/pods/web/log", 404, []string{`no log for container "app" yet`}},
		{"/api/v1/namespaces/ns/pods/stranded/log", 503, []string{"cannot reach the agent"}},
	} {
		code, body := e.get(t, tc.path)
		st := status(t, body)
		if code != tc.code || st.Code != int32(tc.code) {
			t.Errorf("%s: %d %s, want %d", tc.path, code, body, tc.code)
		}
		for _, m := range tc.msg {
			if !strings.Contains(st.Message, m) {
				t.Errorf("%s: message %q does not name %q", tc.path, st.Message, m)
			}
		}
	}
	u, _ := url.Parse(e.front.URL + "/api/v1/namespaces/ns/pods/stranded/exec?command=ls&stdout=true")
	ex, err := clientrc.NewSPDYExecutor(frontConfig(e), "POST", u)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := runExec(t, ex, nil, false); err == nil || !strings.Contains(err.Error(), "cannot reach the agent") {
		t.Errorf("exec on an unreachable agent: %v", err)
	}
	// A plain GET of exec is not an upgrade.
	if code, body := e.get(t, "/api/v1/namespaces/ns/pods/web/exec?command=ls&stdout=true"); code != 400 || !strings.Contains(body, "pgrade") {
		t.Errorf("exec without upgrade: %d %s", code, body)
	}
}

func TestNodeProxyNeedsHijacker(t *testing.T) {
	p := NewNodeProxy(NodeProxyConfig{TLS: &tls.Config{}, Node: func(ctx context.Context, name string) (*corev1.Node, error) {
		return &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}}}, nil
	}})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}, Spec: corev1.PodSpec{NodeName: "n", Containers: []corev1.Container{{Name: "app"}}}}
	r := httptest.NewRequest("POST", "/api/v1/namespaces/ns/pods/web/exec?command=ls&stdout=true", nil)
	type opaque struct{ http.ResponseWriter }
	err := p(opaque{httptest.NewRecorder()}, r, pod, "exec")
	if err == nil || !strings.Contains(err.Error(), "Hijacker") {
		t.Errorf("err %v", err)
	}
}

func frontConfig(e *proxyEnv) *rest.Config { return &rest.Config{Host: e.front.URL} }

func runExec(t *testing.T, ex clientrc.Executor, stdin io.Reader, stderr bool) (string, string, error) {
	t.Helper()
	var o, se bytes.Buffer
	opts := clientrc.StreamOptions{Stdin: stdin, Stdout: &o}
	if stderr {
		opts.Stderr = &se
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := ex.StreamWithContext(ctx, opts)
	return o.String(), se.String(), err
}

func TestNodeProxyExecSPDY(t *testing.T) {
	e := startProxy(t)
	u, _ := url.Parse(e.front.URL + "/api/v1/namespaces/ns/pods/web/exec?command=echo&command=hi+there&stdout=true&stderr=true")
	ex, err := clientrc.NewSPDYExecutor(frontConfig(e), "POST", u)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := runExec(t, ex, nil, true)
	if err != nil || out != "uid-web in ns/web/app: hi there\n" {
		t.Errorf("echo: %q %v", out, err)
	}
	if got, want := e.lastRequest(t), "/exec/ns/web/app?command=echo&command=hi+there&error=1&output=1"; got != want {
		t.Errorf("agent got %s, want %s", got, want)
	}

	u, _ = url.Parse(e.front.URL + "/api/v1/namespaces/ns/pods/web/exec?command=exit&command=7&stdout=true&stderr=true")
	ex, _ = clientrc.NewSPDYExecutor(frontConfig(e), "POST", u)
	_, errOut, err := runExec(t, ex, nil, true)
	var exit exec.CodeExitError
	if !errors.As(err, &exit) || exit.Code != 7 || errOut != "exiting\n" {
		t.Errorf("exit: %q %#v", errOut, err)
	}
}

func TestNodeProxyExecWebSocket(t *testing.T) {
	e := startProxy(t)
	ws := func(path string) clientrc.Executor {
		ex, err := clientrc.NewWebSocketExecutor(frontConfig(e), "GET", e.front.URL+path)
		if err != nil {
			t.Fatal(err)
		}
		return ex
	}
	out, _, err := runExec(t, ws("/api/v1/namespaces/ns/pods/web/exec?command=cat&stdin=true&stdout=true"), strings.NewReader("over websocket"), false)
	if err != nil || out != "over websocket" {
		t.Errorf("cat: %q %v", out, err)
	}
	if got, want := e.lastRequest(t), "/exec/ns/web/app?command=cat&input=1&output=1"; got != want {
		t.Errorf("agent got %s, want %s", got, want)
	}
	_, errOut, err := runExec(t, ws("/api/v1/namespaces/ns/pods/web/exec?command=exit&command=2&stdout=true&stderr=true"), nil, true)
	var exit exec.CodeExitError
	if !errors.As(err, &exit) || exit.Code != 2 || errOut != "exiting\n" {
		t.Errorf("exit: %q %#v", errOut, err)
	}
	out, _, err = runExec(t, ws("/api/v1/namespaces/ns/pods/web/attach?stdin=true&stdout=true&container=app"), strings.NewReader("typed"), false)
	if err != nil || out != "attached to app tty=false\ntyped" {
		t.Errorf("attach: %q %v", out, err)
	}
	if got, want := e.lastRequest(t), "/attach/ns/web/app?input=1&output=1"; got != want {
		t.Errorf("agent got %s, want %s", got, want)
	}
}

// upperEcho answers each line with it upper-cased.
func upperEcho(t *testing.T) int {
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

func TestNodeProxyPortForward(t *testing.T) {
	e := startProxy(t)
	port := upperEcho(t)
	u, _ := url.Parse(e.front.URL + "/api/v1/namespaces/ns/pods/web/portforward")
	rt, upgrader, err := spdy.RoundTripperFor(frontConfig(e))
	if err != nil {
		t.Fatal(err)
	}
	tunnel, err := clientpf.NewSPDYOverWebsocketDialer(u, frontConfig(e))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		dialer httpstream.Dialer
	}{
		{"spdy", spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)},
		{"websocket tunnel", tunnel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop, ready := make(chan struct{}), make(chan struct{})
			pf, err := clientpf.NewOnAddresses(tc.dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { errc <- pf.ForwardPorts() }()
			defer func() {
				close(stop)
				<-errc
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
			if got := e.lastRequest(t); got != "/portForward/ns/web" {
				t.Errorf("agent got %s", got)
			}
		})
	}
}
