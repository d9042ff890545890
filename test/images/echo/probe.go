package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// maxProbeTargets bounds one round of probes.
const maxProbeTargets = 4096

// runProbe tries many targets at once, each with its own timeout, and prints
// one line per target in the order given:
//
//	PROTO:HOST:PORT OK ANSWER
//	PROTO:HOST:PORT FAIL REASON
//
// ANSWER is what connect prints (newlines folded to spaces), REASON what
// connect prints on failure (TIMEOUT, REFUSED, ...). A failed target is a
// result, not an error: probe exits 0 once every target has one, and 2 on a
// bad command line.
//
// With --stdin it takes its work from standard input instead: each line is
// an ID and targets, separated by spaces, and every line is run at once,
// without waiting for the ones before. "ID START" is printed as its probes
// begin (a reader of the stream learns when they left), each result as soon
// as it is known, prefixed with the line's ID and the target's index (from
// 0): "ID INDEX PROTO:HOST:PORT OK ANSWER"; a line "ID END" follows the last
// result of a line ("ID ERROR REASON" and "ID END" for a line that cannot
// run). Probe exits 0 when its input has ended and every line is done: one
// exec into a pod serves a whole test, and a slow target holds up no other.
func runProbe(args []string, stdout, stderr io.Writer) int {
	return probeMain(args, os.Stdin, stdout, stderr)
}

func probeMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlags("probe", stderr)
	timeout := fs.Duration("timeout", time.Second, "give up on each target after this long")
	fromStdin := fs.Bool("stdin", false, "read lines of ID and targets from standard input")
	pos, err := parse(fs, args)
	if err != nil {
		return usageError(stderr, "", err)
	}
	if *timeout <= 0 {
		return usageError(stderr, "--timeout must be positive", nil)
	}
	if *fromStdin {
		if len(pos) != 0 {
			return usageError(stderr, "probe --stdin takes its targets from standard input", nil)
		}
		return probeLines(stdin, stdout, stderr, *timeout)
	}
	if len(pos) == 0 {
		return usageError(stderr, fmt.Sprintf("probe takes 1 to %d PROTO:HOST:PORT targets", maxProbeTargets), nil)
	}
	ts, err := parseTargets(pos)
	if err != nil {
		return usageError(stderr, err.Error(), nil)
	}
	lines := make([]string, len(ts))
	probeEach(ts, *timeout, func(i int, line string) { lines[i] = line })
	for _, l := range lines {
		fmt.Fprintln(stdout, l)
	}
	return 0
}

// probeLines serves --stdin.
func probeLines(stdin io.Reader, stdout, stderr io.Writer, timeout time.Duration) int {
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	emit := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, format+"\n", args...)
	}
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		id := fields[0]
		ts, err := parseTargets(fields[1:])
		if err != nil {
			emit("%s ERROR %s", id, oneLine(err.Error()))
			emit("%s END", id)
			continue
		}
		wg.Go(func() {
			emit("%s START", id)
			probeEach(ts, timeout, func(i int, line string) { emit("%s %d %s", id, i, line) })
			emit("%s END", id)
		})
	}
	wg.Wait()
	if err := sc.Err(); err != nil {
		fmt.Fprintf(stderr, "probe: read targets: %v\n", err)
		return 1
	}
	return 0
}

type target struct{ proto, addr string }

// parseTargets reads PROTO:HOST:PORT targets; an error means a malformed one,
// found before anything is sent.
func parseTargets(args []string) ([]target, error) {
	if len(args) > maxProbeTargets {
		return nil, fmt.Errorf("%d targets: at most %d", len(args), maxProbeTargets)
	}
	ts := make([]target, len(args))
	for i, p := range args {
		proto, addr, ok := strings.Cut(p, ":")
		if !ok {
			return nil, fmt.Errorf("%q is not PROTO:HOST:PORT", p)
		}
		if err := checkTarget(proto, addr); err != nil {
			return nil, err
		}
		ts[i] = target{proto, addr}
	}
	return ts, nil
}

// probeEach tries every target at once and calls done with each one's index
// and result line as it comes; it returns when all have come.
func probeEach(ts []target, timeout time.Duration, done func(i int, line string)) {
	var wg sync.WaitGroup
	for i, tg := range ts {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			answer, err := connect(ctx, tg.proto, tg.addr)
			if err != nil {
				done(i, fmt.Sprintf("%s:%s FAIL %s", tg.proto, tg.addr, oneLine(reason(err))))
			} else {
				done(i, fmt.Sprintf("%s:%s OK %s", tg.proto, tg.addr, oneLine(answer)))
			}
		})
	}
	wg.Wait()
}

// oneLine folds line breaks so each result stays on its own line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
