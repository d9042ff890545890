package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

func runConnect(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("connect", stderr)
	proto := fs.String("protocol", "tcp", "tcp, udp or http")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	pos, err := parse(fs, args)
	if err != nil {
		return usageError(stderr, "", err)
	}
	if len(pos) != 1 {
		return usageError(stderr, "connect takes one HOST:PORT", nil)
	}
	if *timeout <= 0 {
		return usageError(stderr, "--timeout must be positive", nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	answer, err := connect(ctx, *proto, pos[0])
	if errors.Is(err, errUsage) {
		return usageError(stderr, err.Error(), nil)
	}
	if err != nil {
		fmt.Fprintln(stderr, reason(err))
		return 1
	}
	fmt.Fprintln(stdout, answer)
	return 0
}

// errUsage marks a bad protocol or address, as opposed to a failed connection.
var errUsage = errors.New("usage")

// errHTTPStatus is a non-2xx HTTP answer.
type errHTTPStatus struct {
	code int
	body string
}

func (e *errHTTPStatus) Error() string {
	return fmt.Sprintf("HTTP %d %s", e.code, strings.TrimSpace(e.body))
}

// checkTarget returns an errUsage error when connect could not try proto and addr.
func checkTarget(proto, addr string) error {
	switch proto {
	case "tcp", "udp", "http":
	default:
		return fmt.Errorf("%w: unknown protocol %q (tcp, udp or http)", errUsage, proto)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%w: %q is not HOST:PORT", errUsage, addr)
	}
	return nil
}

// connect reaches addr with proto until ctx ends and returns the server's answer.
func connect(ctx context.Context, proto, addr string) (string, error) {
	if err := checkTarget(proto, addr); err != nil {
		return "", err
	}
	switch proto {
	case "tcp":
		return connectTCP(ctx, addr)
	case "udp":
		return connectUDP(ctx, addr)
	default:
		return connectHTTP(ctx, addr)
	}
}

func connectTCP(ctx context.Context, addr string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetReadDeadline(dl)
	}
	// Connected is success; the greeting line is a bonus that servers other than
	// ours may not send.
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), nil
}

func connectUDP(ctx context.Context, addr string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte("hostname")); err != nil {
		return "", err
	}
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func connectHTTP(ctx context.Context, addr string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/hostname", nil)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errUsage, err)
	}
	// A fresh transport: no proxy from the environment, no reused connections.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", &errHTTPStatus{code: resp.StatusCode, body: string(body)}
	}
	return string(body), nil
}

// reason turns a connect error into one line starting with a fixed word.
func reason(err error) string {
	var (
		dnsErr    *net.DNSError
		statusErr *errHTTPStatus
		netErr    net.Error
	)
	switch {
	case errors.As(err, &statusErr):
		return statusErr.Error()
	case errors.As(err, &dnsErr):
		return "DNS: " + err.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return "TIMEOUT"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "REFUSED"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "UNREACHABLE: " + err.Error()
	default:
		return "OTHER: " + err.Error()
	}
}
