package logs

import (
	"bytes"
	"context"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var base = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

// clock returns base, base+1s, base+2s... one step per call.
func clock() func() time.Time {
	var mu sync.Mutex
	n := 0
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t := base.Add(time.Duration(n) * time.Second)
		n++
		return t
	}
}

func TestWriterFormat(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, clock())
	if err := w.Copy(Stdout, strings.NewReader("hello\r\n\nworld\nno newline")); err != nil {
		t.Fatal(err)
	}
	want := "2026-03-01T10:00:00.000000000Z stdout F hello\n" +
		"2026-03-01T10:00:01.000000000Z stdout F \n" +
		"2026-03-01T10:00:02.000000000Z stdout F world\n" +
		"2026-03-01T10:00:03.000000000Z stdout P no newline\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestWriterSplitsLongLines(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, clock())
	long := strings.Repeat("a", MaxLineSize) + strings.Repeat("b", MaxLineSize) + "cc"
	if err := w.Copy(Stderr, strings.NewReader(long+"\nnext\n")); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d entries, want 4", len(lines))
	}
	for i, want := range []struct {
		tag, msg string
	}{{"P", strings.Repeat("a", MaxLineSize)}, {"P", strings.Repeat("b", MaxLineSize)}, {"F", "cc"}, {"F", "next"}} {
		e, ok := parseEntry([]byte(lines[i]))
		if !ok {
			t.Fatalf("entry %d does not parse: %.80q", i, lines[i])
		}
		if tag := map[bool]string{true: "P", false: "F"}[e.partial]; tag != want.tag || string(e.msg) != want.msg || e.stream != Stderr {
			t.Errorf("entry %d: %s %s %.20q (%d bytes), want %s %.20q (%d bytes)", i, e.stream, tag, e.msg, len(e.msg), want.tag, want.msg, len(want.msg))
		}
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	f.n++
	return 0, io.ErrShortWrite
}

func TestWriterDrainsAfterWriteError(t *testing.T) {
	fw := &failWriter{}
	w := NewWriter(fw, clock())
	err := w.Copy(Stdout, strings.NewReader("a\nb\nc\n"))
	if err == nil {
		t.Fatal("no error from a failing file")
	}
	if fw.n != 3 {
		t.Errorf("%d writes, want 3: the stream must be read to its end", fw.n)
	}
}

// writeLog writes a log file through the Writer: stdout and stderr
// alternate, one entry per second from base.
func writeLog(t *testing.T, parts ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := NewWriter(f, clock())
	for _, p := range parts {
		s, text, _ := strings.Cut(p, ":")
		if err := w.Copy(Stream(s), strings.NewReader(text)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func read(t *testing.T, path string, opts ReadOptions) (stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	if err := Read(context.Background(), path, opts, &o, &e); err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String()
}

func ptr[T any](v T) *T { return &v }

func TestRead(t *testing.T) {
	long := strings.Repeat("x", MaxLineSize+10)
	// Times: one1 10:00:00, err1 :01, one2 :02, long :03 (P) :04 (F), err2 :05, three :06.
	path := writeLog(t, "stdout:one1\n", "stderr:err1\n", "stdout:one2\n", "stdout:"+long+"\n", "stderr:err2\n", "stdout:three\n")
	since := base.Add(3 * time.Second)
	tests := []struct {
		name           string
		opts           ReadOptions
		stdout, stderr string
	}{
		{"all", ReadOptions{}, "one1\none2\n" + long + "\nthree\n", "err1\nerr2\n"},
		{"stdout", ReadOptions{Stream: Stdout}, "one1\none2\n" + long + "\nthree\n", ""},
		{"stderr", ReadOptions{Stream: Stderr}, "", "err1\nerr2\n"},
		{"tail 2", ReadOptions{TailLines: ptr[int64](2)}, "three\n", "err2\n"},
		{"tail 3 joins split line", ReadOptions{TailLines: ptr[int64](3)}, long + "\nthree\n", "err2\n"},
		{"tail 2 stderr", ReadOptions{TailLines: ptr[int64](2), Stream: Stderr}, "", "err1\nerr2\n"},
		{"tail 0", ReadOptions{TailLines: ptr[int64](0)}, "", ""},
		{"tail more than all", ReadOptions{TailLines: ptr[int64](100)}, "one1\none2\n" + long + "\nthree\n", "err1\nerr2\n"},
		{"since", ReadOptions{SinceTime: &since}, long + "\nthree\n", "err2\n"},
		{"since mid-line keeps the line whole", ReadOptions{SinceTime: ptr(base.Add(4 * time.Second))}, "three\n", "err2\n"},
		{"timestamps", ReadOptions{Timestamps: true, Stream: Stderr}, "",
			"2026-03-01T10:00:01.000000000Z err1\n2026-03-01T10:00:05.000000000Z err2\n"},
		{"timestamps on split line once", ReadOptions{Timestamps: true, TailLines: ptr[int64](2), Stream: Stdout}, "2026-03-01T10:00:03.000000000Z " + long + "\n2026-03-01T10:00:06.000000000Z three\n", ""},
		{"limit", ReadOptions{LimitBytes: ptr[int64](7)}, "one1\n", "er"},
		{"limit on line end", ReadOptions{LimitBytes: ptr[int64](5), Stream: Stdout}, "one1\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, e := read(t, path, tt.opts)
			if o != tt.stdout {
				t.Errorf("stdout %.60q (%d bytes), want %.60q (%d bytes)", o, len(o), tt.stdout, len(tt.stdout))
			}
			if e != tt.stderr {
				t.Errorf("stderr %q, want %q", e, tt.stderr)
			}
		})
	}
}

func TestReadOneWriter(t *testing.T) {
	path := writeLog(t, "stdout:a\n", "stderr:b\n", "stdout:c\nd")
	var all bytes.Buffer
	if err := Read(context.Background(), path, ReadOptions{}, &all, &all); err != nil {
		t.Fatal(err)
	}
	if all.String() != "a\nb\nc\nd" {
		t.Errorf("got %q", all.String())
	}
}

func TestReadSkipsBadLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	data := "garbage\n2026-03-01T10:00:00Z stdout F ok\n2026-03-01T10:00:01.5Z stdout X bad tag\n2026-03-01T10:00:02Z stdout F\n2026-03-01T10:00:03Z stdout F:x fine\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	o, _ := read(t, path, ReadOptions{Timestamps: true})
	want := "2026-03-01T10:00:00.000000000Z ok\n2026-03-01T10:00:02.000000000Z \n2026-03-01T10:00:03.000000000Z fine\n"
	if o != want {
		t.Errorf("got %q, want %q", o, want)
	}
}

func TestReadMissingFile(t *testing.T) {
	err := Read(context.Background(), filepath.Join(t.TempDir(), "none.log"), ReadOptions{}, io.Discard, io.Discard)
	if !os.IsNotExist(err) && !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("err = %v, want not exist", err)
	}
}

// syncBuffer is a bytes.Buffer safe to read while Read writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFollowEndsOnDone(t *testing.T) {
	path := writeLog(t, "stdout:first\n")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := NewWriter(f, time.Now)
	done := make(chan struct{})
	var out syncBuffer
	errc := make(chan error, 1)
	go func() {
		errc <- Read(context.Background(), path, ReadOptions{Follow: true, Done: done}, &out, &out)
	}()
	waitFor(t, "first", func() bool { return out.String() == "first\n" })
	// A line written in two steps: nothing shows until its end.
	pr, pw := io.Pipe()
	copied := make(chan error, 1)
	go func() { copied <- w.Copy(Stdout, pr) }()
	io.WriteString(pw, "second\nthi")
	waitFor(t, "second", func() bool { return out.String() == "first\nsecond\n" })
	io.WriteString(pw, "rd\n")
	waitFor(t, "third", func() bool { return out.String() == "first\nsecond\nthird\n" })
	select {
	case err := <-errc:
		t.Fatalf("follow ended before Done: %v", err)
	default:
	}
	// Written just before the container exits, read after Done.
	io.WriteString(pw, "last\n")
	pw.Close()
	if err := <-copied; err != nil {
		t.Fatal(err)
	}
	close(done)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end after Done")
	}
	if got := out.String(); got != "first\nsecond\nthird\nlast\n" {
		t.Errorf("got %q", got)
	}
}

func TestFollowEndsOnCancel(t *testing.T) {
	path := writeLog(t, "stdout:first\n")
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	errc := make(chan error, 1)
	go func() { errc <- Read(ctx, path, ReadOptions{Follow: true}, &out, &out) }()
	waitFor(t, "first", func() bool { return out.String() == "first\n" })
	cancel()
	select {
	case err := <-errc:
		if err != context.Canceled {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end on cancel")
	}
}

func TestFollowDoneAlreadyClosed(t *testing.T) {
	path := writeLog(t, "stdout:a\n", "stderr:b\n")
	done := make(chan struct{})
	close(done)
	var out syncBuffer
	start := time.Now()
	if err := Read(context.Background(), path, ReadOptions{Follow: true, Done: done}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "a\nb\n" {
		t.Errorf("got %q", out.String())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestDriver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pods", "ns_p_uid", "c", "0.log")
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- Driver{Path: path, Stdout: outR, Stderr: errR, Now: clock(), Ready: func() error { close(ready); return nil }}.Run(context.Background())
	}()
	<-ready
	io.WriteString(outW, "out\n")
	waitFor(t, "stdout entry", func() bool { b, _ := os.ReadFile(path); return len(b) > 0 })
	io.WriteString(errW, "err\n")
	outW.Close()
	errW.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "2026-03-01T10:00:00.000000000Z stdout F out\n2026-03-01T10:00:01.000000000Z stderr F err\n"
	if string(b) != want {
		t.Errorf("got %q, want %q", b, want)
	}
}

func TestDriverStopsWhenToldWithStreamsOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	outR, outW := io.Pipe()
	defer outW.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Driver{Path: path, Stdout: outR}.Run(ctx) }()
	io.WriteString(outW, "x\n")
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2*drainGrace + time.Second):
		t.Fatal("driver did not stop")
	}
	o, _ := read(t, path, ReadOptions{})
	if o != "x\n" {
		t.Errorf("got %q", o)
	}
}

func TestDriverMainArgs(t *testing.T) {
	for _, args := range [][]string{nil, {"relative.log"}, {"/a.log", "extra"}} {
		if err := DriverMain(args); err == nil {
			t.Errorf("DriverMain(%q) accepted", args)
		}
	}
}

// TestIOCreator checks the URI the shim gets, and the argv it makes of it
// (containerd's cmd/containerd-shim-runc-v2/process.NewBinaryCmd).
func TestIOCreator(t *testing.T) {
	logPath := "/var/log/pods/ns_p_0123/c/0.log"
	io, err := IOCreator("/usr/local/bin/capstan", "logdriver", logPath)("ctr")
	if err != nil {
		t.Fatal(err)
	}
	cfg := io.Config()
	if cfg.Stdout != cfg.Stderr || cfg.Stdin != "" || cfg.Terminal {
		t.Fatalf("config %+v", cfg)
	}
	u, err := url.Parse(cfg.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "binary" || u.Path != "/usr/local/bin/capstan" {
		t.Fatalf("uri %s", u)
	}
	var argv []string
	for k, vs := range u.Query() {
		argv = append(argv, k)
		if len(vs) > 0 {
			argv = append(argv, vs[0])
		}
	}
	if strings.Join(argv, " ") != "logdriver "+logPath {
		t.Errorf("argv %q", argv)
	}

	tio, err := TerminalIOCreator("/usr/local/bin/capstan", "logdriver", logPath)("ctr")
	if err != nil {
		t.Fatal(err)
	}
	if c := tio.Config(); !c.Terminal || c.Stdout != cfg.Stdout {
		t.Errorf("terminal config %+v", c)
	}
	if _, err := IOCreator("capstan", "logdriver", logPath)("ctr"); err == nil {
		t.Error("relative binary accepted")
	}
}

func TestFollowHalfWrittenEntry(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	errc := make(chan error, 1)
	go func() {
		errc <- Read(ctx, path, ReadOptions{Follow: true, Timestamps: true, TailLines: ptr[int64](10)}, &out, &out)
	}()
	io.WriteString(f, "2026-03-01T10:00:00Z stdout P hel")
	time.Sleep(100 * time.Millisecond)
	if got := out.String(); got != "" {
		t.Fatalf("half an entry shown: %q", got)
	}
	io.WriteString(f, "lo, \n2026-03-01T10:00:01Z stdout F world\n")
	waitFor(t, "the whole line", func() bool { return out.String() == "2026-03-01T10:00:00.000000000Z hello, world\n" })
	cancel()
	<-errc
}
