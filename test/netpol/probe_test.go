//go:build netpol

package netpol_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
)

// probeKey is one probe: from pod i to pod j on col.
type probeKey struct {
	i, j int
	col  column
}

// probeResult is what one probe found, and when it was sent: when the
// probe process said it began, or else when the suite wrote its request.
type probeResult struct {
	key    probeKey
	cell   byte // '.', 'X' or '?'
	detail string
	sent   time.Time
}

// converge probes a step's table until it holds, and returns how long after
// done the probes were sent from which on every pair matched. Every probe is
// sent at once. One whose newest answer differs from the table, or that has
// not answered yet, is sent again every retryPause (every 4*retryPause while
// an earlier try is still out), for up to patience after done: an answer
// shows the network as it was when its probe left, and a denied probe takes
// probeTimeout to say so. Once all match, every probe runs once more to
// confirm.
func (s *suite) converge(t *testing.T, st step, done time.Time, patience time.Duration) (time.Duration, bool) {
	var cols []column
	for _, c := range st.cols {
		if c.proto == corev1.ProtocolSCTP && s.noSCTP != "" {
			t.Logf("%s column skipped: %s", c, s.noSCTP)
			continue
		}
		cols = append(cols, c)
	}
	want, obs := map[column]*reach{}, map[column]*observed{}
	var all []probeKey
	for _, c := range cols {
		want[c], obs[c] = expected(s.m, st, c), newObserved(s.m.pods)
		for i := range s.m.pods {
			for j := range s.m.pods {
				all = append(all, probeKey{i, j, c})
			}
		}
	}
	var (
		hist     = map[probeKey]*history{}
		launched = map[probeKey]time.Time{}
		inflight = map[probeKey]int{}
		results  = make(chan probeResult, len(all))

		matched, outstanding, probes int
		confirming                   bool
	)
	for _, k := range all {
		hist[k] = &history{}
	}
	launch := func(keys []probeKey) {
		now := time.Now()
		for _, k := range keys {
			launched[k] = now
			inflight[k]++
		}
		outstanding += len(keys)
		probes += len(keys)
		s.launch(keys, results)
	}
	launch(all)
	tick := time.NewTicker(retryPause)
	defer tick.Stop()
	for {
		select {
		case r := <-results:
			outstanding--
			inflight[r.key]--
			h := hist[r.key]
			was := h.matches()
			ok := r.cell == mark(want[r.key.col].ok[r.key.i][r.key.j])
			if h.add(r, ok) {
				o := obs[r.key.col]
				o.cell[r.key.i][r.key.j], o.detail[r.key.i][r.key.j] = r.cell, r.detail
			}
			switch now := h.matches(); {
			case now && !was:
				matched++
			case !now && was:
				matched--
			}
			if !ok {
				confirming = false
			}
		case <-tick.C:
			if time.Since(done) >= patience {
				break
			}
			var again []probeKey
			for _, k := range all {
				wait := retryPause
				if inflight[k] > 0 {
					wait *= 4
				}
				if !hist[k].matches() && time.Since(launched[k]) >= wait {
					again = append(again, k)
				}
			}
			if len(again) > 0 {
				launch(again)
			}
		}
		if outstanding > 0 {
			continue
		}
		if matched < len(all) {
			if time.Since(done) >= patience {
				break
			}
			continue
		}
		if confirming {
			var (
				last    time.Time
				slowest probeKey
			)
			for k, h := range hist {
				if since := h.since(); since.After(last) {
					last, slowest = since, k
				}
			}
			took := max(last.Sub(done), 0)
			note := ""
			if bad := hist[slowest].firstBad; bad != "" {
				note = fmt.Sprintf("; the last to hold: %s -> %s on %s, which first said %q", s.m.pods[slowest.i], s.m.pods[slowest.j], slowest.col, bad)
			}
			t.Logf("%s: %d probes on %v hold %v after the change (%d probes sent%s)", st.what, len(all), cols, took.Round(time.Millisecond), probes, note)
			return took, true
		}
		confirming = true
		launch(all)
	}
	t.Errorf("%s: %d of %d probes still differ %v after the change (%d probes sent)", st.what, len(all)-matched, len(all),
		time.Since(done).Round(time.Millisecond), probes)
	for _, c := range cols {
		if len(obs[c].mismatches(want[c])) > 0 {
			t.Logf("\n%s", obs[c].report(c, want[c]))
		}
	}
	return 0, false
}

// history is what the tries of one probe found, by when they were sent:
// answers may come in another order.
type history struct {
	newest   time.Time // when the newest answered try was sent
	newestOK bool
	lastBad  time.Time   // when the newest differing try was sent
	good     []time.Time // when matching tries were sent
	firstBad string      // what the first differing try said
}

// add takes an answer in and reports whether it is the newest so far.
func (h *history) add(r probeResult, ok bool) bool {
	if ok {
		h.good = append(h.good, r.sent)
	} else {
		if r.sent.After(h.lastBad) {
			h.lastBad = r.sent
		}
		if h.firstBad == "" {
			h.firstBad = r.detail
		}
	}
	if h.newest.IsZero() || !r.sent.Before(h.newest) {
		h.newest, h.newestOK = r.sent, ok
		return true
	}
	return false
}

// matches reports whether the newest try matched.
func (h *history) matches() bool { return !h.newest.IsZero() && h.newestOK }

// since is when the first of the matching tries sent after the last
// differing one was sent: from then on the probe matched.
func (h *history) since() time.Time {
	var first time.Time
	for _, g := range h.good {
		if g.After(h.lastBad) && (first.IsZero() || g.Before(first)) {
			first = g
		}
	}
	return first
}

// launch sends the probes, each client's through its probe session (apart,
// so that a slow session holds up no other), and delivers each one's result
// on results as it comes.
func (s *suite) launch(keys []probeKey, results chan<- probeResult) {
	byClient := map[int][]probeKey{}
	for _, k := range keys {
		byClient[k.i] = append(byClient[k.i], k)
	}
	for i, ks := range byClient {
		targets := make([]string, len(ks))
		for n, k := range ks {
			targets[n] = s.m.target(s.m.pods[k.j], k.col)
		}
		go func() {
			p := s.prober(i)
			answers, sent, err := p.send(targets)
			got := make([]bool, len(ks))
			if err == nil {
				err = collect(answers, func(at time.Time) { sent = at }, func(n int, line string) {
					if n >= 0 && n < len(ks) && !got[n] {
						got[n] = true
						results <- probeResult{ks[n], parseProbe(line, targets[n], s.m.pods[ks[n].j].name), line, sent}
					}
				})
			}
			if err == nil {
				for _, g := range got {
					if !g {
						err = errors.New("a target got no result line")
					}
				}
			}
			if err != nil {
				s.closeProber(i, p)
			}
			for n, g := range got {
				if !g {
					results <- probeResult{ks[n], '?', err.Error(), sent}
				}
			}
		}()
	}
}

// collect reads one request's answers ("START", "INDEX RESULT", "ERROR
// REASON", "END") until END; it calls started with when START arrived (the
// probes left about then), and result with each result.
func collect(answers <-chan string, started func(time.Time), result func(n int, line string)) error {
	timeout := time.After(probeTimeout + 20*time.Second)
	for {
		select {
		case l, ok := <-answers:
			if !ok {
				return errors.New("probe session ended")
			}
			if l == "END" {
				return nil
			}
			if at, ok := strings.CutPrefix(l, "START "); ok {
				if ns, err := strconv.ParseInt(at, 10, 64); err == nil {
					started(time.Unix(0, ns))
				}
				continue
			}
			if reason, ok := strings.CutPrefix(l, "ERROR "); ok {
				return errors.New(reason)
			}
			idx, line, _ := strings.Cut(l, " ")
			n, err := strconv.Atoi(idx)
			if err != nil {
				return fmt.Errorf("probe printed %q", l)
			}
			result(n, line)
		case <-timeout:
			return errors.New("probe session: no answer in time")
		}
	}
}

// parseProbe reads one result of capstan-echo probe: allowed when the pod
// named want answered, denied when the connection failed.
func parseProbe(line, target, want string) byte {
	rest, ok := strings.CutPrefix(line, target+" ")
	switch {
	case !ok:
		return '?'
	case rest == "OK "+want:
		return '.'
	case strings.HasPrefix(rest, "FAIL "):
		return 'X'
	default:
		return '?'
	}
}

// prober is a client pod's probe session: `capstan-echo probe --stdin` in
// an exec that lasts, so that a probe costs no exec of its own and leaves
// the moment the suite asks.
type prober struct {
	in     *io.PipeWriter
	cancel context.CancelFunc

	mu      sync.Mutex
	next    int
	waiting map[string]chan string // the answers of each request, by ID
	closed  bool
	buf     []byte
	stderr  bytes.Buffer
}

// prober is client i's session, started if it has none.
func (s *suite) prober(i int) *prober {
	s.probersMu.Lock()
	defer s.probersMu.Unlock()
	if p := s.probers[i]; p != nil {
		return p
	}
	r, w := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	p := &prober{in: w, cancel: cancel, waiting: map[string]chan string{}}
	go func() {
		err := s.exec(ctx, s.m.pods[i], r, p, &p.stderr, "/capstan-echo", "probe", "--stdin", "--timeout", probeTimeout.String())
		err = fmt.Errorf("probe session in %s ended: %v %s", s.m.pods[i], err, strings.TrimSpace(p.stderr.String()))
		r.CloseWithError(err)
		p.end(err)
	}()
	s.probers[i] = p
	return p
}

// closeProber ends client i's session p (if it still is client i's); the
// next probe starts another.
func (s *suite) closeProber(i int, p *prober) {
	s.probersMu.Lock()
	if p == nil {
		p = s.probers[i]
	}
	if s.probers[i] == p {
		delete(s.probers, i)
	}
	s.probersMu.Unlock()
	if p != nil {
		p.in.Close()
		p.cancel()
	}
}

// send starts a request: the targets are probed at once, and their answers
// come on the channel.
func (p *prober) send(targets []string) (<-chan string, time.Time, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, time.Now(), errors.New("probe session ended")
	}
	p.next++
	id := strconv.Itoa(p.next)
	// START, a result per target, END or ERROR, and end's ERROR.
	ch := make(chan string, len(targets)+4)
	p.waiting[id] = ch
	p.mu.Unlock()
	sent := time.Now()
	if _, err := io.WriteString(p.in, id+" "+strings.Join(targets, " ")+"\n"); err != nil {
		return nil, sent, fmt.Errorf("probe session: %w", err)
	}
	return ch, sent, nil
}

// Write takes the session's output and hands each line to its request.
func (p *prober) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	eachLine(&p.buf, b, func(l string) {
		id, rest, _ := strings.Cut(l, " ")
		if rest == "START" {
			// Stamped here, as it arrives.
			rest = "START " + strconv.FormatInt(time.Now().UnixNano(), 10)
		}
		if ch := p.waiting[id]; ch != nil {
			ch <- rest
			if rest == "END" {
				delete(p.waiting, id)
			}
		}
	})
	return len(b), nil
}

// end tells the requests still waiting that the session has ended, and why.
func (p *prober) end(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for id, ch := range p.waiting {
		// Room is left for this: no END came, so not every result did.
		ch <- "ERROR " + err.Error()
		close(ch)
		delete(p.waiting, id)
	}
}

// exec runs a command in a model pod's first container, as kubectl exec
// does; stdin may be nil.
func (s *suite) exec(ctx context.Context, p podID, stdin io.Reader, stdout, stderr io.Writer, cmd ...string) error {
	req := s.c.CS.CoreV1().RESTClient().Post().Resource("pods").Namespace(s.m.real[p.ns]).Name(p.name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: "cont-80", Command: cmd, Stdin: stdin != nil, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(s.c.Rest, "POST", req.URL())
	if err != nil {
		return err
	}
	return ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: stdout, Stderr: stderr})
}
