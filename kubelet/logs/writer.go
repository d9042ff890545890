// Package logs keeps container logs in the CRI log format, as the kubelet
// does on containerd: one line per entry,
//
//	2016-10-06T00:17:09.669794202Z stdout F message
//
// where F ends a line of output and P is a piece of a longer line that the
// following entries of the same stream complete. A containerd logging binary
// (Driver, DriverMain, IOCreator) writes the files and Read serves them with
// the options of kubectl logs.
package logs

import (
	"bufio"
	"errors"
	"io"
	"sync"
	"time"
)

// Stream is the output stream an entry came from.
type Stream string

// The streams, as written in log files.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// MaxLineSize is the longest message of one entry; longer lines are split
// into P entries, as containerd's max_container_log_line_size does.
const MaxLineSize = 16 * 1024

const (
	tagFull    = 'F'
	tagPartial = 'P'
	// timeFormat is RFC3339Nano with a fixed width, so that lines line up.
	timeFormat = "2006-01-02T15:04:05.000000000Z07:00"
)

// Writer writes the entries of a container's streams to one log file. Its
// streams may be copied at the same time; each entry is a single Write.
type Writer struct {
	now func() time.Time

	mu  sync.Mutex
	out io.Writer
	buf []byte
}

// NewWriter writes entries to out (a file opened for appending), stamped
// with now in UTC.
func NewWriter(out io.Writer, now func() time.Time) *Writer {
	return &Writer{out: out, now: now}
}

// Copy reads r until it ends and writes what it reads as entries of stream,
// each stamped with the time it was read. A last line without a newline is
// written as a P entry. It keeps reading after a write fails, so that the
// container never blocks on its output, and then returns the first error.
func (w *Writer) Copy(stream Stream, r io.Reader) error {
	br := bufio.NewReaderSize(r, MaxLineSize)
	var werr error
	for {
		line, err := br.ReadSlice('\n')
		tag := byte(tagFull)
		switch {
		case err == nil:
			line = line[:len(line)-1]
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
		case errors.Is(err, bufio.ErrBufferFull):
			tag = tagPartial
		default:
			tag = tagPartial
			if len(line) == 0 {
				if errors.Is(err, io.EOF) {
					return werr
				}
				return errors.Join(werr, err)
			}
		}
		if e := w.write(stream, tag, line); e != nil && werr == nil {
			werr = e
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				return werr
			}
			return errors.Join(werr, err)
		}
	}
}

func (w *Writer) write(stream Stream, tag byte, msg []byte) error {
	t := w.now().UTC()
	w.mu.Lock()
	defer w.mu.Unlock()
	b := t.AppendFormat(w.buf[:0], timeFormat)
	b = append(b, ' ')
	b = append(b, stream...)
	b = append(b, ' ', tag, ' ')
	b = append(b, msg...)
	b = append(b, '\n')
	w.buf = b
	_, err := w.out.Write(b)
	return err
}
