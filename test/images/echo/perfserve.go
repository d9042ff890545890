package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The perf port's protocol (see the package comment): one line names the test,
// then the bytes of that test follow.
const (
	// perfMaxSize bounds the message size of an rr test.
	perfMaxSize = 1 << 20
	// perfBufSize is the size of the reads and writes of a stream test.
	perfBufSize = 128 << 10
	// perfMaxLine bounds the first line; "rr 1048576" is 10 bytes.
	perfMaxLine = 64
	// perfLineTimeout is how long a new connection may take to send its first
	// line, and how long an error answer is given to reach the client.
	perfLineTimeout = 10 * time.Second
)

// errLongLine is a first line longer than perfMaxLine.
var errLongLine = errors.New("line too long")

// servePerf answers capstan-echo perf clients until ctx ends.
func (s *server) servePerf(ctx context.Context, l net.Listener) error {
	return serveConns(ctx, l, perfConn)
}

// perfConn runs the test the client's first line asks for. The data path has no
// deadlines: a benchmark should measure the network, not timer upkeep, and the
// client bounds every wait on its side.
func perfConn(c net.Conn) {
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(perfLineTimeout))
	line, err := readLine(r, perfMaxLine)
	switch {
	case errors.Is(err, errLongLine):
		perfRefuse(c, r, fmt.Sprintf("the first line is longer than %d bytes", perfMaxLine))
		return
	case errors.Is(err, io.EOF) && line != "":
		perfRefuse(c, r, fmt.Sprintf("the first line %q has no newline", line))
		return
	case err != nil:
		return
	}
	c.SetReadDeadline(time.Time{})
	name, arg, _ := strings.Cut(line, " ")
	switch {
	case line == "stream":
		perfStream(c, r)
	case name == "rr":
		size, err := strconv.Atoi(arg)
		if err != nil || size < 1 || size > perfMaxSize {
			perfRefuse(c, r, fmt.Sprintf("rr needs a size of 1 to %d bytes, not %q", perfMaxSize, arg))
			return
		}
		perfRR(c, r, size)
	default:
		perfRefuse(c, r, fmt.Sprintf("unknown test %q (want \"stream\" or \"rr SIZE\")", line))
	}
}

// readLine returns the next line without its "\n" (or "\r\n"). At the end of
// the input it returns what it read so far with io.EOF.
func readLine(r *bufio.Reader, max int) (string, error) {
	var b []byte
	for len(b) <= max {
		c, err := r.ReadByte()
		if err != nil {
			return string(b), err
		}
		if c == '\n' {
			return strings.TrimSuffix(string(b), "\r"), nil
		}
		b = append(b, c)
	}
	return "", errLongLine
}

// perfRefuse answers "error: msg" and ends the connection. It half-closes and
// reads what the client still sends, so that the close does not turn into a
// reset that could discard the answer before the client reads it.
func perfRefuse(c net.Conn, r io.Reader, msg string) {
	c.SetDeadline(time.Now().Add(perfLineTimeout))
	if _, err := io.WriteString(c, "error: "+msg+"\n"); err != nil {
		return
	}
	if hc, ok := c.(interface{ CloseWrite() error }); ok {
		hc.CloseWrite()
		io.Copy(io.Discard, io.LimitReader(r, perfMaxSize))
	}
}

// perfStream discards what the client sends and, when it half-closes, answers
// the byte count as a decimal line.
func perfStream(c net.Conn, r io.Reader) {
	buf := make([]byte, perfBufSize)
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return // the client went away; nobody to tell
		}
	}
	c.SetWriteDeadline(time.Now().Add(perfLineTimeout))
	fmt.Fprintf(c, "%d\n", total)
}

// perfRR sends each size bytes it reads straight back, until the client closes.
func perfRR(c net.Conn, r io.Reader, size int) {
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// rusage is the answer of GET /rusage: the CPU time the process has used.
type rusage struct {
	UserS float64 `json:"user_s"`
	SysS  float64 `json:"sys_s"`
}

// serveRusage answers the serve process's CPU time, so a benchmark can take two
// readings and divide the difference by the requests in between.
func serveRusage(w http.ResponseWriter, r *http.Request) {
	user, sys, err := cpuTimes()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body, err := json.Marshal(rusage{UserS: seconds(user, 6), SysS: seconds(sys, 6)})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

// cpuTimes returns the user and system CPU time this process has used.
func cpuTimes() (user, sys time.Duration, err error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano()), nil
}

// seconds is d in seconds rounded to the given number of decimals.
func seconds(d time.Duration, decimals int) float64 {
	return round(d.Seconds(), decimals)
}

// round rounds x to the given number of decimals, so that JSON shows 0.25 and
// not 0.25000000000000006.
func round(x float64, decimals int) float64 {
	p := math.Pow10(decimals)
	return math.Round(x*p) / p
}
