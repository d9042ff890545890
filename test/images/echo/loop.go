package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"time"
)

// runLoop sends requests to one address until its duration ends or SIGTERM, for
// tests that change a Service under load and must see every request answered.
// It prints one FAIL line per failed request at once, a PROGRESS line every
// --report, and a DONE line at the end; it exits 1 when any request failed.
func runLoop(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("loop", stderr)
	proto := fs.String("protocol", "http", "tcp, udp or http")
	interval := fs.Duration("interval", 50*time.Millisecond, "pause between requests")
	timeout := fs.Duration("timeout", 2*time.Second, "per-request timeout")
	duration := fs.Duration("duration", 0, "stop after this long (0: at SIGTERM)")
	persistent := fs.Bool("persistent", false, "tcp only: keep one connection and echo a line over it each interval")
	report := fs.Duration("report", time.Second, "interval between PROGRESS lines")
	conns := fs.Int("connections", 1, "with --persistent: how many connections to keep at once")
	pos, err := parse(fs, args)
	if err != nil {
		return usageError(stderr, "", err)
	}
	if len(pos) != 1 {
		return usageError(stderr, "loop takes one HOST:PORT", nil)
	}
	if *interval < 0 || *timeout <= 0 || *duration < 0 || *report <= 0 {
		return usageError(stderr, "--interval and --duration must not be negative, --timeout and --report must be positive", nil)
	}
	if *conns < 1 || *conns > 1000 {
		return usageError(stderr, "--connections must be 1 to 1000", nil)
	}
	if *persistent && *proto != "tcp" {
		return usageError(stderr, "--persistent needs --protocol tcp", nil)
	}
	if _, _, err := net.SplitHostPort(pos[0]); err != nil {
		return usageError(stderr, fmt.Sprintf("%q is not HOST:PORT", pos[0]), nil)
	}
	ctx, cancel := signalContext()
	defer cancel()
	if *duration > 0 {
		var c context.CancelFunc
		ctx, c = context.WithTimeout(ctx, *duration)
		defer c()
	}
	l := &looper{addr: pos[0], proto: *proto, timeout: *timeout, out: stdout, start: time.Now(), seen: map[string]int{}}
	go l.progress(ctx, *report)
	if *persistent {
		var wg sync.WaitGroup
		for i := 0; i < *conns; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); l.persistent(ctx, *interval) }()
		}
		wg.Wait()
	} else {
		l.requests(ctx, *interval)
	}
	l.print("DONE %s", l.summary())
	if l.failures > 0 {
		return 1
	}
	return 0
}

type looper struct {
	addr, proto string
	timeout     time.Duration
	start       time.Time

	mu                  sync.Mutex
	out                 io.Writer
	requestsN, failures int
	seen                map[string]int
}

func (l *looper) print(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.out, format+"\n", args...)
}

func (l *looper) record(answer string, err error) {
	l.mu.Lock()
	l.requestsN++
	if err != nil {
		l.failures++
	} else {
		l.seen[answer]++
	}
	l.mu.Unlock()
	if err != nil {
		l.print("FAIL %s %s", time.Since(l.start).Round(time.Millisecond), reason(err))
	}
}

func (l *looper) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var bs []string
	for b, n := range l.seen {
		bs = append(bs, fmt.Sprintf("%s:%d", b, n))
	}
	sort.Strings(bs)
	return fmt.Sprintf("requests=%d failures=%d backends=%s", l.requestsN, l.failures, strings.Join(bs, ","))
}

func (l *looper) progress(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.print("PROGRESS %s %s", time.Since(l.start).Round(time.Second), l.summary())
		}
	}
}

// sleep waits d or until ctx ends, and reports whether to go on.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// requests opens a new connection for each request, so every one goes through
// the Service's backend selection.
func (l *looper) requests(ctx context.Context, interval time.Duration) {
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		answer, err := connect(rctx, l.proto, l.addr)
		cancel()
		l.record(answer, err)
		if !sleep(ctx, interval) {
			return
		}
	}
}

// persistent keeps one TCP connection to an echo server and checks each line
// comes back over it; a broken connection is a failure and is reopened.
func (l *looper) persistent(ctx context.Context, interval time.Duration) {
	var (
		c       net.Conn
		r       *bufio.Reader
		backend string
	)
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for n := 0; ctx.Err() == nil; n++ {
		if c == nil {
			var d net.Dialer
			dctx, cancel := context.WithTimeout(context.Background(), l.timeout)
			conn, err := d.DialContext(dctx, "tcp", l.addr)
			cancel()
			if err != nil {
				l.record("", err)
				sleep(ctx, interval)
				continue
			}
			c, r = conn, bufio.NewReader(conn)
			c.SetReadDeadline(time.Now().Add(l.timeout))
			greeting, err := r.ReadString('\n')
			if err != nil {
				l.record("", err)
				c.Close()
				c = nil
				continue
			}
			backend = strings.TrimSpace(greeting)
			l.print("CONNECTED %s", backend)
		}
		msg := fmt.Sprintf("ping %d\n", n)
		c.SetDeadline(time.Now().Add(l.timeout))
		_, err := io.WriteString(c, msg)
		var back string
		if err == nil {
			back, err = r.ReadString('\n')
		}
		if err == nil && back != msg {
			err = fmt.Errorf("sent %q, got %q back", msg, back)
		}
		l.record(backend, err)
		if err != nil {
			c.Close()
			c = nil
		}
		if !sleep(ctx, interval) {
			return
		}
	}
}
