package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingListener counts the connections it accepts and the bytes the server
// reads from them.
type countingListener struct {
	net.Listener
	accepts, read atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepts.Add(1)
	return &countingConn{Conn: c, read: &l.read}, nil
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// startPerf serves only a perf port on loopback until the test ends.
func startPerf(t *testing.T) *countingListener {
	t.Helper()
	s, _ := newTestServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: l}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx, listeners{perf: cl}) }()
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
	return cl
}

// runPerfJSON runs capstan-echo perf and decodes its one output line.
func runPerfJSON(t *testing.T, args ...string) (int, perfResult) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"perf"}, args...), &stdout, &stderr)
	out := stdout.String()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Fatalf("perf %q: exit %d, stdout %q is not one line (stderr %q)", args, code, out, stderr.String())
	}
	var res perfResult
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("perf %q: %v in %q", args, err, out)
	}
	t.Logf("perf %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(out))
	return code, res
}

func TestPerfStream(t *testing.T) {
	l := startPerf(t)
	code, res := runPerfJSON(t, l.Addr().String(), "--test", "stream", "--duration", "300ms", "--connections", "2")
	if code != 0 || res.Errors != 0 || res.FirstError != "" {
		t.Fatalf("exit %d, errors %d %q", code, res.Errors, res.FirstError)
	}
	if res.Test != "stream" || res.Target != l.Addr().String() || res.Connections != 2 || res.Size != perfBufSize {
		t.Errorf("header fields %+v", res)
	}
	// The server read a "stream\n" line and then the payload on each connection.
	counted := l.read.Load() - int64(len("stream\n"))*l.accepts.Load()
	if res.Bytes <= 0 || res.Bytes != counted {
		t.Errorf("bytes %d, the server read %d payload bytes", res.Bytes, counted)
	}
	if res.Ops <= 0 || l.accepts.Load() != 2 {
		t.Errorf("ops %d over %d connections, want > 0 over 2", res.Ops, l.accepts.Load())
	}
	if want := float64(res.Bytes) * 8 / res.DurationS; math.Abs(res.BitsPerS-want) > want/100 {
		t.Errorf("bits_per_s %v, want about %v", res.BitsPerS, want)
	}
	if res.DurationS < 0.3 || res.DurationS > 5 {
		t.Errorf("duration_s %v for --duration 300ms", res.DurationS)
	}
	if res.LatencyUS != (perfLatency{}) {
		t.Errorf("stream has latencies %+v", res.LatencyUS)
	}
}

func TestPerfRR(t *testing.T) {
	l := startPerf(t)
	code, res := runPerfJSON(t, l.Addr().String(), "--test=rr", "--duration=300ms", "--connections=2", "--size=100")
	if code != 0 || res.Errors != 0 || res.FirstError != "" {
		t.Fatalf("exit %d, errors %d %q", code, res.Errors, res.FirstError)
	}
	if res.Ops <= 0 || res.Bytes != res.Ops*200 {
		t.Errorf("ops %d, bytes %d; want ops > 0 and 200 bytes each", res.Ops, res.Bytes)
	}
	if n := l.accepts.Load(); n != 2 {
		t.Errorf("%d connections, want 2 persistent ones", n)
	}
	lat := res.LatencyUS
	if !(lat.P50 > 0 && lat.P50 <= lat.P90 && lat.P90 <= lat.P99 && lat.P99 <= lat.Max) {
		t.Errorf("latencies %+v, want 0 < p50 <= p90 <= p99 <= max", lat)
	}
	if res.OpsPerS <= 0 || res.CPUS < 0 {
		t.Errorf("ops_per_s %v, cpu_s %v", res.OpsPerS, res.CPUS)
	}
}

func TestPerfCRR(t *testing.T) {
	// With --count the number of operations is exact: each its own connection.
	l := startPerf(t)
	code, res := runPerfJSON(t, l.Addr().String(), "--test", "crr", "--connections", "2", "--count", "25", "--size", "10")
	if code != 0 || res.Errors != 0 {
		t.Fatalf("exit %d, errors %d %q", code, res.Errors, res.FirstError)
	}
	if res.Ops != 50 || l.accepts.Load() != 50 || res.Bytes != 50*20 {
		t.Errorf("ops %d, accepts %d, bytes %d; want 50, 50, 1000", res.Ops, l.accepts.Load(), res.Bytes)
	}
	if res.DurationS >= 10 {
		t.Errorf("duration_s %v: --count did not end the run", res.DurationS)
	}

	// Bounded by time: a cycle the end cuts short was accepted but is no op.
	l = startPerf(t)
	code, res = runPerfJSON(t, l.Addr().String(), "--test", "crr", "--connections", "2", "--duration", "300ms")
	if code != 0 || res.Errors != 0 || res.Ops <= 0 {
		t.Fatalf("exit %d, ops %d, errors %d %q", code, res.Ops, res.Errors, res.FirstError)
	}
	if n := l.accepts.Load(); n < res.Ops || n > res.Ops+2 {
		t.Errorf("%d ops over %d connections, want one connection per op", res.Ops, n)
	}
	lat := res.LatencyUS
	if !(lat.P50 > 0 && lat.P50 <= lat.P90 && lat.P90 <= lat.P99 && lat.P99 <= lat.Max) {
		t.Errorf("latencies %+v, want 0 < p50 <= p90 <= p99 <= max", lat)
	}
}

func TestPerfErrors(t *testing.T) {
	closed, _ := closedPorts(t)
	code, res := runPerfJSON(t, closed, "--test", "crr", "--duration", "200ms", "--timeout", "100ms")
	if code != 1 || res.Errors == 0 || res.Ops != 0 || !strings.Contains(res.FirstError, "refused") {
		t.Errorf("crr to a closed port: exit %d, ops %d, errors %d, first_error %q; want 1, 0, > 0, refused",
			code, res.Ops, res.Errors, res.FirstError)
	}
	// A port that answers but is not a perf port: serve's TCP port greets.
	echo := echoListener(t)
	code, res = runPerfJSON(t, echo.Addr().String(), "--test", "rr", "--duration", "200ms", "--timeout", "100ms")
	if code != 1 || res.Errors == 0 || !strings.Contains(res.FirstError, "not the request") {
		t.Errorf("rr to an echo port: exit %d, errors %d, first_error %q", code, res.Errors, res.FirstError)
	}
}

// perfExchange sends raw bytes to the perf port, half-closes and returns all
// the server answers.
func perfExchange(t *testing.T, addr, send string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, send); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("send %q: %v after %q", send, err, b)
	}
	return string(b)
}

func TestPerfServerProtocol(t *testing.T) {
	l := startPerf(t)
	addr := l.Addr().String()
	for send, want := range map[string]string{
		"stream\n0123456789":     "10\n",
		"stream\r\n":             "0\n",
		"rr 3\nabcdef":           "abcdef",
		"rr 3\nabcd":             "abc", // the half request is dropped
		"hello\n":                `error: unknown test "hello" (want "stream" or "rr SIZE")` + "\n",
		"stream now\n":           `error: unknown test "stream now" (want "stream" or "rr SIZE")` + "\n",
		"rr 0\nx":                `error: rr needs a size of 1 to 1048576 bytes, not "0"` + "\n",
		"rr 1048577\n":           `error: rr needs a size of 1 to 1048576 bytes, not "1048577"` + "\n",
		"rr\n":                   `error: rr needs a size of 1 to 1048576 bytes, not ""` + "\n",
		"stream":                 `error: the first line "stream" has no newline` + "\n",
		strings.Repeat("x", 100): "error: the first line is longer than 64 bytes\n",
	} {
		if got := perfExchange(t, addr, send); got != want {
			t.Errorf("send %q: got %q, want %q", send, got, want)
		}
	}
}

func TestRusage(t *testing.T) {
	s, _ := newTestServer(t)
	code, body := get(t, s.handler(), "/rusage")
	if code != 200 {
		t.Fatalf("GET /rusage = %d %q", code, body)
	}
	var ru map[string]float64
	if err := json.Unmarshal([]byte(body), &ru); err != nil {
		t.Fatalf("GET /rusage = %q: %v", body, err)
	}
	user, okU := ru["user_s"]
	sys, okS := ru["sys_s"]
	if len(ru) != 2 || !okU || !okS || user < 0 || sys < 0 {
		t.Errorf("GET /rusage = %q, want user_s and sys_s >= 0", body)
	}
}

func TestPerfUsage(t *testing.T) {
	for _, args := range [][]string{
		{"perf"},
		{"perf", "--test", "rr"},
		{"perf", "nohostport", "--test", "rr"},
		{"perf", "127.0.0.1:5201"},
		{"perf", "127.0.0.1:5201", "--test", "udp"},
		{"perf", "127.0.0.1:5201", "--test", "rr", "--connections", "0"},
		{"perf", "127.0.0.1:5201", "--test", "rr", "--size", "0"},
		{"perf", "127.0.0.1:5201", "--test", "rr", "--size", "1048577"},
		{"perf", "127.0.0.1:5201", "--test", "rr", "--duration", "0"},
		{"perf", "127.0.0.1:5201", "--test", "rr", "--count", "-1"},
		{"perf", "127.0.0.1:5201", "--test", "rr", "--bogus"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 || stdout.Len() != 0 || stderr.Len() == 0 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2, nothing, a message", args, code, stdout.String(), stderr.String())
		}
	}
}

func TestLatencyHist(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var a, b latencyHist
	var all []uint64
	for i := range 20000 {
		// Log-uniform from 1 ns to about 10 s.
		v := uint64(math.Exp(rng.Float64() * math.Log(1e10)))
		all = append(all, v)
		if i%3 == 0 {
			a.record(time.Duration(v))
		} else {
			b.record(time.Duration(v))
		}
	}
	a.merge(&b)
	slices.Sort(all)
	for _, q := range []float64{0.01, 1, 50, 90, 99, 99.9, 100} {
		rank := int(math.Ceil(q / 100 * float64(len(all))))
		want := all[max(rank, 1)-1]
		got := a.percentile(q)
		if diff := math.Abs(float64(got) - float64(want)); diff > float64(want)/100 {
			t.Errorf("p%v = %d, want %d within 1%%", q, got, want)
		}
	}
	if a.max != all[len(all)-1] || a.percentile(100) != a.max || a.min != all[0] {
		t.Errorf("min %d max %d p100 %d, want %d and %d", a.min, a.max, a.percentile(100), all[0], all[len(all)-1])
	}
	var empty latencyHist
	if empty.percentile(50) != 0 {
		t.Error("an empty histogram has a p50")
	}
	// Every bucket's value lies in the bucket.
	for i := range histBuckets {
		if histBucket(histValue(i)) != i {
			t.Fatalf("bucket %d: value %d is in bucket %d", i, histValue(i), histBucket(histValue(i)))
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// TestServePerfPort runs serve as a process: --perf-port answers perf, /rusage
// reports the CPU the load cost, and SIGTERM ends serve with a perf connection
// still open.
func TestServePerfPort(t *testing.T) {
	perfPort, httpPort := freePort(t), freePort(t)
	cmd := command(t, "serve", "--http-port", httpPort, "--tcp-port", "0", "--udp-port", "0", "--perf-port", perfPort)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	first := make(chan string, 1)
	go func() {
		b := make([]byte, 256)
		n, _ := stdout.Read(b)
		first <- string(b[:n])
		io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-first:
		if !strings.HasPrefix(line, "serving as ") || !strings.Contains(line, ", perf "+perfPort+"\n") {
			t.Fatalf("first line %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve printed nothing")
	}

	code, res := runPerfJSON(t, "127.0.0.1:"+perfPort, "--test", "rr", "--duration", "200ms")
	if code != 0 || res.Ops == 0 || res.Errors != 0 {
		t.Fatalf("perf rr: exit %d, ops %d, errors %d %q", code, res.Ops, res.Errors, res.FirstError)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://127.0.0.1:" + httpPort + "/rusage")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ru rusage
	if err := json.Unmarshal(body, &ru); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /rusage = %q (%s): %v", body, resp.Header.Get("Content-Type"), err)
	}
	if ru.UserS < 0 || ru.SysS < 0 || ru.UserS+ru.SysS == 0 {
		t.Errorf("GET /rusage after %d round trips = %q", res.Ops, body)
	}

	idle, err := net.DialTimeout("tcp", "127.0.0.1:"+perfPort, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := io.WriteString(idle, "rr 1\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let serve accept it
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not exit on SIGTERM with a perf connection open")
	}
}
