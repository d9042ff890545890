package logs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fsnotify/fsnotify"
)

// ReadOptions are the options of kubectl logs.
type ReadOptions struct {
	// Follow keeps reading as the file grows, until ctx ends or Done is
	// closed and what was written has been read.
	Follow bool
	// TailLines, if set, starts at the last n lines (a line split into P
	// entries counts once).
	TailLines *int64
	// SinceTime, if set, skips lines that started before it.
	SinceTime *time.Time
	// Timestamps prefixes each line with its time (RFC3339Nano, fixed width) and a space.
	Timestamps bool
	// LimitBytes, if set, stops after that many bytes of output.
	LimitBytes *int64
	// Stream selects one stream; empty means both.
	Stream Stream
	// Done is closed when the container has exited: a follow then ends
	// once the file is read to its end.
	Done <-chan struct{}
}

const (
	// pollInterval bounds the wait for new entries when file events are missed.
	pollInterval = time.Second
	// settle is how long a follow waits for last entries once Done is closed:
	// the driver may still be copying what the container wrote before it exited.
	settle = 200 * time.Millisecond
	// readBlock is the unit read backwards when looking for the tail.
	readBlock = 32 * 1024
)

// errLimit stops a read when LimitBytes have been written.
var errLimit = errors.New("limit reached")

// Read writes the messages of the log file at path to stdout and stderr
// (either may be nil to drop that stream). Lines are written whole: a
// message split into P entries is joined with the entry that completes it.
func Read(ctx context.Context, path string, opts ReadOptions, stdout, stderr io.Writer) error {
	if opts.TailLines != nil && *opts.TailLines == 0 && !opts.Follow {
		return nil
	}
	if opts.LimitBytes != nil && *opts.LimitBytes <= 0 {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer f.Close()

	out := &output{opts: opts, stdout: stdout, stderr: stderr, remain: -1}
	if opts.LimitBytes != nil {
		out.remain = *opts.LimitBytes
	}
	if opts.Stream == Stdout {
		out.stderr = nil
	} else if opts.Stream == Stderr {
		out.stdout = nil
	}
	if opts.TailLines != nil {
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("stat log: %w", err)
		}
		start, err := tailStart(f, st.Size(), *opts.TailLines, out.wants)
		if err != nil {
			return fmt.Errorf("find tail: %w", err)
		}
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("seek log: %w", err)
		}
	}
	err = readFrom(ctx, f, path, opts, out)
	if errors.Is(err, errLimit) {
		return nil
	}
	return err
}

func readFrom(ctx context.Context, f *os.File, path string, opts ReadOptions, out *output) error {
	r := bufio.NewReaderSize(f, 64*1024)
	var (
		pending []byte // an entry being written, read up to the end of the file
		w       *waiter
		done    = opts.Done
		exited  bool // Done is closed
		settled bool // waited for last entries since the last read data
	)
	defer func() {
		if w != nil {
			w.close()
		}
	}()
	for {
		line, err := r.ReadSlice('\n')
		switch {
		case err == nil:
			if len(pending) > 0 {
				line = append(pending, line...)
				pending = pending[:0]
			}
			if err := out.entry(line[:len(line)-1]); err != nil {
				return err
			}
			settled = false
			continue
		case errors.Is(err, bufio.ErrBufferFull):
			// Not an entry this program writes; keep it whole anyway.
			pending = append(pending, line...)
			continue
		case !errors.Is(err, io.EOF):
			return fmt.Errorf("read log: %w", err)
		}
		if len(line) > 0 {
			pending = append(pending, line...)
			settled = false
		}
		if !opts.Follow || (exited && settled) {
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if w == nil {
			w = newWaiter(path)
			continue // the file may have grown before the watch began
		}
		if exited {
			// Events may be left from entries already read: wait it out.
			t := time.NewTimer(settle)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			settled = true
			continue
		}
		if w.wait(ctx, done, pollInterval) {
			exited, done = true, nil
		}
	}
	if len(pending) > 0 {
		// The end of the file without a newline: cut off mid-write.
		return out.entry(pending)
	}
	return nil
}

// waiter wakes a follow when the file changes, polling if it cannot watch.
type waiter struct {
	watch *fsnotify.Watcher
}

func newWaiter(path string) *waiter {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return &waiter{}
	}
	if err := w.Add(path); err != nil {
		w.Close()
		return &waiter{}
	}
	return &waiter{watch: w}
}

// wait returns on a change of the file, after max, when ctx ends, or
// when done is closed; it reports the latter.
func (w *waiter) wait(ctx context.Context, done <-chan struct{}, max time.Duration) bool {
	t := time.NewTimer(max)
	defer t.Stop()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w.watch != nil {
		events, errs = w.watch.Events, w.watch.Errors
	}
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-events:
	case <-errs:
	case <-done:
		return true
	}
	return false
}

func (w *waiter) close() {
	if w.watch != nil {
		w.watch.Close()
	}
}

// entry is one parsed line of a log file.
type entry struct {
	time    time.Time
	stream  Stream
	partial bool
	msg     []byte
}

func parseEntry(line []byte) (entry, bool) {
	var e entry
	ts, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return e, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return e, false
	}
	stream, rest, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		return e, false
	}
	e.stream = Stream(stream)
	if e.stream != Stdout && e.stream != Stderr {
		return e, false
	}
	tag, msg, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		// "<time> <stream> F" with an empty message and no trailing space.
		tag, msg = rest, nil
	}
	// Tags may grow ':'-separated fields; the first is P or F.
	tag, _, _ = bytes.Cut(tag, []byte{':'})
	switch string(tag) {
	case "F":
	case "P":
		e.partial = true
	default:
		return e, false
	}
	e.time, e.msg = t, msg
	return e, true
}

// output writes entries as kubectl logs shows them.
type output struct {
	opts           ReadOptions
	stdout, stderr io.Writer
	remain         int64 // bytes left to write; negative: no limit
	state          [2]lineState
	buf            []byte
}

// lineState is where a stream stands in a line split into P entries.
type lineState struct {
	mid  bool // the line's first entry has been seen
	skip bool // the line started before SinceTime
}

func (o *output) writer(s Stream) (io.Writer, *lineState) {
	if s == Stdout {
		return o.stdout, &o.state[0]
	}
	return o.stderr, &o.state[1]
}

func (o *output) wants(s Stream) bool {
	w, _ := o.writer(s)
	return w != nil
}

func (o *output) entry(line []byte) error {
	e, ok := parseEntry(line)
	if !ok {
		return nil // not an entry: skip it, as the kubelet does
	}
	w, st := o.writer(e.stream)
	if w == nil {
		return nil
	}
	b := o.buf[:0]
	if !st.mid {
		st.skip = o.opts.SinceTime != nil && e.time.Before(*o.opts.SinceTime)
		if o.opts.Timestamps {
			b = e.time.AppendFormat(b, timeFormat)
			b = append(b, ' ')
		}
	}
	st.mid = e.partial
	if st.skip {
		return nil
	}
	b = append(b, e.msg...)
	if !e.partial {
		b = append(b, '\n')
	}
	o.buf = b
	limited := false
	if o.remain >= 0 && int64(len(b)) >= o.remain {
		b, limited = b[:o.remain], true
	}
	n, err := w.Write(b)
	if o.remain >= 0 {
		o.remain -= int64(n)
	}
	if err != nil {
		return err
	}
	if limited {
		return errLimit
	}
	return nil
}

// tailStart returns the offset of the first of the last n lines of the
// wanted streams: just after the (n+1)th F entry from the end. An
// unfinished entry at the end of the file does not count.
func tailStart(f io.ReaderAt, size, n int64, wants func(Stream) bool) (int64, error) {
	pos := size
	var carry []byte // bytes [pos, pos+len(carry)) not yet split into lines
	// more reads the block before carry; it reports false at the start.
	more := func() (bool, error) {
		if pos == 0 {
			return false, nil
		}
		size := int64(readBlock)
		if size > pos {
			size = pos
		}
		pos -= size
		buf := make([]byte, size, size+int64(len(carry)))
		if _, err := f.ReadAt(buf, pos); err != nil {
			return false, err
		}
		carry = append(buf, carry...)
		return true, nil
	}
	// Drop the unfinished entry at the end.
	for {
		if i := bytes.LastIndexByte(carry, '\n'); i >= 0 {
			carry = carry[:i+1]
			break
		}
		ok, err := more()
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, nil
		}
	}
	var count int64
	for len(carry) > 0 {
		end := pos + int64(len(carry))
		i := bytes.LastIndexByte(carry[:len(carry)-1], '\n')
		if i < 0 && pos > 0 {
			if _, err := more(); err != nil {
				return 0, err
			}
			continue
		}
		line := carry[i+1 : len(carry)-1]
		if e, ok := parseEntry(line); ok && !e.partial && wants(e.stream) {
			count++
			if count > n {
				return end, nil
			}
		}
		carry = carry[:i+1]
	}
	return 0, nil
}
