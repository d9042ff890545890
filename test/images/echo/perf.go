package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// perfReconnectPause is how long a stream or rr connection waits after a
// failure before it dials again, so a dead target is not dialled in a busy loop
// that would inflate cpu_s. crr has no pause: failed cycles are what it counts.
const perfReconnectPause = 10 * time.Millisecond

// runPerf measures one test against a serve --perf-port listener and prints the
// result as one JSON line. It exits 1 when no operation completed and something
// failed, 2 on a usage error, and 0 otherwise (errors are in the JSON).
func runPerf(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("perf", stderr)
	test := fs.String("test", "", "stream, rr or crr")
	duration := fs.Duration("duration", 10*time.Second, "how long to measure")
	conns := fs.Int("connections", 1, "parallel connections (stream, rr) or workers (crr)")
	size := fs.Int("size", 1, "rr and crr: bytes per request and per response")
	timeout := fs.Duration("timeout", 2*time.Second, "deadline of each dial, read and write")
	count := fs.Int("count", 0, "stop each connection or worker after this many operations (0: no limit)")
	pos, err := parse(fs, args)
	if err != nil {
		return usageError(stderr, "", err)
	}
	if len(pos) != 1 {
		return usageError(stderr, "perf takes one HOST:PORT", nil)
	}
	if _, _, err := net.SplitHostPort(pos[0]); err != nil {
		return usageError(stderr, fmt.Sprintf("%q is not HOST:PORT", pos[0]), nil)
	}
	switch {
	case *test != "stream" && *test != "rr" && *test != "crr":
		return usageError(stderr, fmt.Sprintf("--test must be stream, rr or crr, not %q", *test), nil)
	case *conns < 1 || *conns > 1000:
		return usageError(stderr, "--connections must be 1 to 1000", nil)
	case *size < 1 || *size > perfMaxSize:
		return usageError(stderr, fmt.Sprintf("--size must be 1 to %d", perfMaxSize), nil)
	case *duration <= 0 || *timeout <= 0:
		return usageError(stderr, "--duration and --timeout must be positive", nil)
	case *count < 0:
		return usageError(stderr, "--count must not be negative", nil)
	}
	ctx, cancel := signalContext()
	defer cancel()
	p := &perf{test: *test, target: pos[0], conns: *conns, size: *size,
		duration: *duration, timeout: *timeout, count: int64(*count)}
	res := p.run(ctx)
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(res); err != nil {
		fmt.Fprintf(stderr, "perf: %v\n", err)
		return 1
	}
	if res.Ops == 0 && res.Errors > 0 {
		return 1
	}
	return 0
}

// perfResult is the JSON line perf prints. bytes counts payload only: what the
// server received (stream), or request plus response bytes (rr, crr).
type perfResult struct {
	Test        string      `json:"test"`
	Target      string      `json:"target"`
	Connections int         `json:"connections"`
	Size        int         `json:"size"`
	DurationS   float64     `json:"duration_s"`
	Ops         int64       `json:"ops"`
	Bytes       int64       `json:"bytes"`
	Errors      int64       `json:"errors"`
	OpsPerS     float64     `json:"ops_per_s"`
	BitsPerS    float64     `json:"bits_per_s"`
	LatencyUS   perfLatency `json:"latency_us"`
	CPUS        float64     `json:"cpu_s"`
	FirstError  string      `json:"first_error"`
}

// perfLatency holds percentiles in microseconds; all zero for stream.
type perfLatency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// perf is one measurement.
type perf struct {
	test, target string
	conns, size  int
	duration     time.Duration
	timeout      time.Duration
	count        int64 // per worker; 0: no limit

	addr string    // target with the host resolved once, so crr dials no DNS
	end  time.Time // workers stop here
	ctx  context.Context

	mu       sync.Mutex
	firstErr string
}

// perfTally is what one worker counted; the workers' tallies are summed.
type perfTally struct {
	ops, bytes, errors int64
	lat                latencyHist
}

func (p *perf) run(ctx context.Context) perfResult {
	res := perfResult{Test: p.test, Target: p.target, Connections: p.conns, Size: p.size}
	if p.test == "stream" {
		res.Size = perfBufSize
	}
	user0, sys0, _ := cpuTimes()
	start := time.Now()
	p.end = start.Add(p.duration)
	var cancel context.CancelFunc
	p.ctx, cancel = context.WithDeadline(ctx, p.end)
	defer cancel()

	var total perfTally
	if addr, err := p.resolve(); err != nil {
		total.errors++
		p.firstErr = err.Error()
	} else {
		p.addr = addr
		tallies := make([]perfTally, p.conns)
		var wg sync.WaitGroup
		for i := range tallies {
			t := &tallies[i]
			switch p.test {
			case "stream":
				wg.Go(func() { p.stream(t) })
			case "rr":
				wg.Go(func() { p.rr(t) })
			case "crr":
				wg.Go(func() { p.crr(t) })
			}
		}
		wg.Wait()
		for i := range tallies {
			total.ops += tallies[i].ops
			total.bytes += tallies[i].bytes
			total.errors += tallies[i].errors
			total.lat.merge(&tallies[i].lat)
		}
	}
	elapsed := time.Since(start)
	user1, sys1, _ := cpuTimes()

	res.DurationS = seconds(elapsed, 3)
	res.Ops, res.Bytes, res.Errors = total.ops, total.bytes, total.errors
	if s := elapsed.Seconds(); s > 0 {
		res.OpsPerS = round(float64(total.ops)/s, 1)
		res.BitsPerS = round(float64(total.bytes)*8/s, 1)
	}
	us := func(ns uint64) float64 { return round(float64(ns)/1e3, 1) }
	res.LatencyUS = perfLatency{
		P50: us(total.lat.percentile(50)),
		P90: us(total.lat.percentile(90)),
		P99: us(total.lat.percentile(99)),
		Max: us(total.lat.max),
	}
	res.CPUS = seconds((user1-user0)+(sys1-sys0), 3)
	res.FirstError = p.firstErr
	return res
}

// resolve looks the target's host name up once, so that crr measures
// connections and not DNS; the first address is used for the whole run.
func (p *perf) resolve() (string, error) {
	host, port, _ := net.SplitHostPort(p.target)
	if _, err := netip.ParseAddr(host); err == nil {
		return p.target, nil
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.timeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(ips[0].Unmap().String(), port), nil
}

// over reports whether the run has ended: the duration is up or a signal came.
func (p *perf) over() bool {
	return p.ctx.Err() != nil || !time.Now().Before(p.end)
}

// deadline is the deadline of an I/O call starting at now: the timeout, but no
// later than the end of the run, so that no worker overruns the duration.
func (p *perf) deadline(now time.Time) time.Time {
	if d := now.Add(p.timeout); d.Before(p.end) {
		return d
	}
	return p.end
}

// done reports whether a worker has done its --count operations.
func (p *perf) done(t *perfTally) bool {
	return p.count > 0 && t.ops >= p.count
}

// fail counts a failure. Once the run is over, I/O that the end of the run cut
// short is no failure and is not counted; fail reports whether it counted.
func (p *perf) fail(t *perfTally, err error) bool {
	if p.over() {
		return false
	}
	t.errors++
	p.mu.Lock()
	if p.firstErr == "" {
		p.firstErr = err.Error()
	}
	p.mu.Unlock()
	return true
}

func (p *perf) dial() (net.Conn, error) {
	d := net.Dialer{Deadline: p.deadline(time.Now())}
	return d.DialContext(p.ctx, "tcp", p.addr)
}

// stream keeps one connection sending as fast as it can until the end, and
// opens another if one fails.
func (p *perf) stream(t *perfTally) {
	buf := make([]byte, perfBufSize)
	for !p.over() && !p.done(t) {
		if !p.streamConn(t, buf) {
			sleep(p.ctx, perfReconnectPause)
		}
	}
}

// streamConn sends "stream" and then buf over and over on one connection until
// the run ends, half-closes, and adds the byte count the server answers. When
// that answer is missing it adds the bytes it wrote, and counts an error.
func (p *perf) streamConn(t *perfTally, buf []byte) bool {
	c, err := p.dial()
	if err != nil {
		p.fail(t, err)
		return false
	}
	defer c.Close()
	c.SetWriteDeadline(p.deadline(time.Now()))
	if _, err := io.WriteString(c, "stream\n"); err != nil {
		p.fail(t, err)
		return false
	}
	var sent int64
	for !p.over() && !p.done(t) {
		c.SetWriteDeadline(p.deadline(time.Now()))
		n, err := c.Write(buf)
		if n > 0 {
			sent += int64(n)
			t.ops++
		}
		if err != nil {
			if p.fail(t, err) {
				t.bytes += sent
				return false
			}
			break // the end of the run cut the write short
		}
	}
	// The bytes still in flight are the server's to count: the count comes after
	// it has read them all.
	var answer string
	hc, ok := c.(interface{ CloseWrite() error })
	if !ok {
		err = fmt.Errorf("stream: %T cannot half-close", c)
	} else if err = hc.CloseWrite(); err == nil {
		c.SetReadDeadline(time.Now().Add(p.timeout))
		answer, err = readAnswer(c)
	}
	var received int64
	if err == nil {
		received, err = strconv.ParseInt(answer, 10, 64)
		if err != nil {
			err = fmt.Errorf("stream: the server answered %q, not a byte count", answer)
		}
	}
	if err != nil {
		t.bytes += sent
		t.errors++ // counted even after the end: the run's bytes are in doubt
		p.mu.Lock()
		if p.firstErr == "" {
			p.firstErr = "stream: reading the server's byte count: " + err.Error()
		}
		p.mu.Unlock()
		return false
	}
	t.bytes += received
	return true
}

// readAnswer reads one short line, up to EOF.
func readAnswer(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return line, nil
}

// rr keeps one connection sending size bytes and waiting for them to come back
// until the end, and opens another if one fails.
func (p *perf) rr(t *perfTally) {
	req, resp := perfPayload(p.size), make([]byte, p.size)
	header := []byte(fmt.Sprintf("rr %d\n", p.size))
	for !p.over() && !p.done(t) {
		if !p.rrConn(t, header, req, resp) {
			sleep(p.ctx, perfReconnectPause)
		}
	}
}

func (p *perf) rrConn(t *perfTally, header, req, resp []byte) bool {
	c, err := p.dial()
	if err != nil {
		p.fail(t, err)
		return false
	}
	defer c.Close()
	c.SetWriteDeadline(p.deadline(time.Now()))
	if _, err := c.Write(header); err != nil {
		p.fail(t, err)
		return false
	}
	for check := true; !p.over() && !p.done(t); check = false {
		start := time.Now()
		c.SetDeadline(p.deadline(start))
		if err := p.roundTrip(c, req, resp, check); err != nil {
			p.fail(t, err)
			return false
		}
		t.lat.record(time.Since(start))
		t.ops++
		t.bytes += 2 * int64(len(req))
	}
	return true
}

// roundTrip writes req and reads len(req) bytes into resp. With check, resp must
// be req again: anything else is not a perf port (serve's TCP port greets with
// the hostname) or an "error: ..." answer. Once the first answer on a connection
// matched, the byte counts keep it in step and later ones are not compared, so
// large sizes do not pay for a comparison per round trip.
func (p *perf) roundTrip(c net.Conn, req, resp []byte, check bool) error {
	if _, err := c.Write(req); err != nil {
		return err
	}
	n, err := io.ReadFull(c, resp)
	if check && n > 0 && !bytes.Equal(resp[:n], req[:n]) {
		return fmt.Errorf("%s answered %q, not the request", p.target, truncate(resp[:n]))
	}
	return err
}

// crr opens a new connection for every request, like netperf's TCP_CRR: dial,
// send the header and one request, read the response, close. The latency is
// from the start of the dial to the end of the response.
func (p *perf) crr(t *perfTally) {
	req := perfPayload(p.size)
	msg := append([]byte(fmt.Sprintf("rr %d\n", p.size)), req...)
	resp := make([]byte, p.size)
	for !p.over() && !p.done(t) {
		start := time.Now()
		if err := p.crrCycle(msg, req, resp); err != nil {
			p.fail(t, err)
			continue
		}
		t.lat.record(time.Since(start))
		t.ops++
		t.bytes += 2 * int64(p.size)
	}
}

func (p *perf) crrCycle(msg, req, resp []byte) error {
	c, err := p.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(p.deadline(time.Now()))
	n, err := c.Write(msg)
	if err == nil {
		n, err = io.ReadFull(c, resp)
		if n > 0 && !bytes.Equal(resp[:n], req[:n]) {
			return fmt.Errorf("%s answered %q, not the request", p.target, truncate(resp[:n]))
		}
	}
	return err
}

// perfPayload is size bytes of lowercase letters. It never starts with "e", so
// an "error: ..." answer cannot pass for an echo.
func perfPayload(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

func truncate(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

// latencyHist counts latencies in nanoseconds in log-linear buckets, as
// HdrHistogram does: below 128 ns one bucket per nanosecond, above that 64
// buckets per power of two. A bucket is at most 1/64 of its lower bound wide,
// so its midpoint is within 0.8% of any sample in it. min and max are exact.
// The counts are allocated on the first sample.
type latencyHist struct {
	counts   []uint64
	n        uint64
	min, max uint64
}

const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	// histMaxBits bounds the samples to 2^40 ns, about 18 minutes.
	histMaxBits = 40
	histBuckets = (histMaxBits - histSubBits + 1) * histSub
)

// histBucket is the bucket of v: values below 2*histSub are their own bucket;
// above, the bucket keeps v's highest histSubBits+1 bits.
func histBucket(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	return shift*histSub + int(v>>shift)
}

// histValue is the midpoint of bucket i.
func histValue(i int) uint64 {
	if i < 2*histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	low := uint64(i%histSub+histSub) << shift
	return low + (uint64(1)<<shift)/2
}

func (h *latencyHist) record(d time.Duration) {
	v := uint64(max(d, 0))
	v = min(v, 1<<histMaxBits-1)
	if h.counts == nil {
		h.counts = make([]uint64, histBuckets)
	}
	h.counts[histBucket(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	h.max = max(h.max, v)
	h.n++
}

func (h *latencyHist) merge(o *latencyHist) {
	if o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint64, histBuckets)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
}

// percentile is the nearest-rank percentile: the smallest recorded latency
// that at least q percent of the samples do not exceed, to the bucket's
// precision. It is 0 without samples.
func (h *latencyHist) percentile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q / 100 * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(max(histValue(i), h.min), h.max)
		}
	}
	return h.max
}
