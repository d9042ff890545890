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
	"strconv"
	"strings"
	"sync"
	"time"
)

// notReadyFile makes /readyz fail while it exists.
const notReadyFile = "/tmp/not-ready"

// server holds what the handlers need; tests build one with their own hostname,
// readiness file and exit function.
type server struct {
	hostname     string
	notReadyFile string
	// exit ends the process; it is called after the /exit answer is written.
	exit func(code int)
	log  io.Writer
}

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("serve", stderr)
	httpPort := fs.Int("http-port", 8080, "HTTP port (0: off)")
	tcpPort := fs.Int("tcp-port", 9000, "TCP echo port (0: off)")
	udpPort := fs.Int("udp-port", 9001, "UDP port (0: off)")
	perfPort := fs.Int("perf-port", 5201, "TCP port for capstan-echo perf (0: off)")
	if pos, err := parse(fs, args); err != nil || len(pos) != 0 {
		return usageError(stderr, "serve takes no arguments", err)
	}
	for _, p := range []int{*httpPort, *tcpPort, *udpPort, *perfPort} {
		if p < 0 || p > 65535 {
			return usageError(stderr, fmt.Sprintf("port %d is out of range 0-65535", p), nil)
		}
	}
	host, err := os.Hostname()
	if err != nil {
		fmt.Fprintf(stderr, "hostname: %v\n", err)
		return 1
	}
	ctx, cancel := signalContext()
	defer cancel()

	s := &server{hostname: host, notReadyFile: notReadyFile, exit: os.Exit, log: stderr}
	var ls listeners
	if *httpPort != 0 {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(*httpPort))
		if err != nil {
			fmt.Fprintf(stderr, "listen http: %v\n", err)
			return 1
		}
		ls.http = l
	}
	if *tcpPort != 0 {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(*tcpPort))
		if err != nil {
			ls.close()
			fmt.Fprintf(stderr, "listen tcp: %v\n", err)
			return 1
		}
		ls.tcp = l
	}
	if *udpPort != 0 {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(*udpPort))
		if err != nil {
			ls.close()
			fmt.Fprintf(stderr, "listen udp: %v\n", err)
			return 1
		}
		ls.udp = pc
	}
	if *perfPort != 0 {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(*perfPort))
		if err != nil {
			ls.close()
			fmt.Fprintf(stderr, "listen perf: %v\n", err)
			return 1
		}
		ls.perf = l
	}
	fmt.Fprintf(stdout, "serving as %s: http %d, tcp %d, udp %d, perf %d\n", host, *httpPort, *tcpPort, *udpPort, *perfPort)
	if err := s.serve(ctx, ls); err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "shut down")
	return 0
}

// listeners are the sockets serve answers on; any may be nil.
type listeners struct {
	http net.Listener
	tcp  net.Listener
	udp  net.PacketConn
	perf net.Listener
}

func (ls listeners) close() {
	if ls.http != nil {
		ls.http.Close()
	}
	if ls.tcp != nil {
		ls.tcp.Close()
	}
	if ls.udp != nil {
		ls.udp.Close()
	}
	if ls.perf != nil {
		ls.perf.Close()
	}
}

// serve answers on the listeners until ctx ends, then closes them and returns nil,
// or returns the first listener error.
func (s *server) serve(ctx context.Context, ls listeners) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	var hs *http.Server
	if ls.http != nil {
		hs = &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := hs.Serve(ls.http); !errors.Is(err, http.ErrServerClosed) {
				fail(fmt.Errorf("http: %w", err))
			}
		})
	}
	if ls.tcp != nil {
		wg.Go(func() {
			if err := s.serveTCP(ctx, ls.tcp); err != nil {
				fail(fmt.Errorf("tcp: %w", err))
			}
		})
	}
	if ls.udp != nil {
		wg.Go(func() {
			if err := s.serveUDP(ctx, ls.udp); err != nil {
				fail(fmt.Errorf("udp: %w", err))
			}
		})
	}
	if ls.perf != nil {
		wg.Go(func() {
			if err := s.servePerf(ctx, ls.perf); err != nil {
				fail(fmt.Errorf("perf: %w", err))
			}
		})
	}
	<-ctx.Done()
	if hs != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		hs.Shutdown(sctx)
	}
	ls.close()
	wg.Wait()
	return errors.Join(errs...)
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	hostname := func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, s.hostname) }
	mux.HandleFunc("GET /{$}", hostname)
	mux.HandleFunc("GET /hostname", hostname)
	mux.HandleFunc("GET /echo", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Query().Get("msg"))
	})
	mux.HandleFunc("GET /clientip", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RemoteAddr)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if _, err := os.Stat(s.notReadyFile); err == nil {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /rusage", serveRusage)
	mux.HandleFunc("GET /exit", func(w http.ResponseWriter, r *http.Request) {
		code := 0
		if v := r.URL.Query().Get("code"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 255 {
				http.Error(w, "code must be 0-255", http.StatusBadRequest)
				return
			}
			code = n
		}
		w.Header().Set("Connection", "close")
		fmt.Fprintf(w, "exiting %d", code)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		fmt.Fprintf(s.log, "exiting with code %d on request from %s\n", code, r.RemoteAddr)
		s.exit(code)
	})
	return mux
}

// serveTCP writes the hostname line to each connection, then echoes it.
func (s *server) serveTCP(ctx context.Context, l net.Listener) error {
	return serveConns(ctx, l, func(c net.Conn) {
		if _, err := io.WriteString(c, s.hostname+"\n"); err != nil {
			return
		}
		io.Copy(c, bufio.NewReader(c))
	})
}

// serveConns accepts connections and runs handle on each in its own goroutine
// until ctx ends; then it closes the open connections, waits for the handlers
// and returns nil. handle need not close its connection.
func serveConns(ctx context.Context, l net.Listener, handle func(net.Conn)) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	conns := make(map[net.Conn]struct{})
	var mu sync.Mutex
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			handle(c)
		})
	}
}

// serveUDP answers each datagram with the hostname, or with the rest of the
// payload when it starts with "echo ".
func (s *server) serveUDP(ctx context.Context, pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if _, err := pc.WriteTo(udpAnswer(s.hostname, buf[:n]), addr); err != nil {
			fmt.Fprintf(s.log, "udp answer to %s: %v\n", addr, err)
		}
	}
}

func udpAnswer(hostname string, payload []byte) []byte {
	if rest, ok := strings.CutPrefix(string(payload), "echo "); ok {
		return []byte(rest)
	}
	return []byte(hostname)
}
