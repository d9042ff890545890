// Command capstan-echo is the workload in Capstan's test images, in the spirit of
// Kubernetes' agnhost: one static binary whose subcommands are a server, a client,
// and a few process behaviours that node and network tests need.
//
//	capstan-echo serve [--http-port 8080] [--tcp-port 9000] [--udp-port 9001] [--perf-port 5201]
//	capstan-echo connect HOST:PORT [--protocol tcp|udp|http] [--timeout 2s]
//	capstan-echo probe [--timeout 1s] PROTO:HOST:PORT...   or   probe [--timeout 1s] --stdin
//	capstan-echo loop HOST:PORT [--protocol http|tcp|udp] [--interval 50ms] [--duration 0] [--persistent]
//	capstan-echo perf HOST:PORT --test stream|rr|crr [--duration 10s] [--connections 1] [--size 1] [--timeout 2s] [--count 0]
//	capstan-echo pause
//	capstan-echo crash [--code 1] [--after 0s]
//	capstan-echo hostname
//	capstan-echo kubeapi PATH [--timeout 5s]
//
// # serve
//
// A port of 0 turns that listener off. SIGTERM or SIGINT shuts every listener down
// and exits 0. The protocols:
//
// HTTP (GET; bodies are the bare value, no trailing newline):
//
//	/ and /hostname   the hostname (os.Hostname)
//	/echo?msg=TEXT    TEXT
//	/clientip         the peer's address as host:port
//	/healthz          200 "ok"
//	/rusage           the serve process's CPU time so far (getrusage RUSAGE_SELF),
//	                  as JSON {"user_s":1.23,"sys_s":0.45}; a benchmark takes two
//	                  readings and divides the difference by its requests
//	/readyz           200 "ok", or 503 "not ready" while /tmp/not-ready exists
//	                  (so a test can flip readiness with exec: touch /tmp/not-ready)
//	/exit?code=N      answers "exiting N", then the process exits with code N
//	                  (N defaults to 0; for restart tests)
//
// TCP: on accept the server writes the hostname and "\n", then echoes every byte it
// reads back to the sender until the peer closes.
//
// UDP: each datagram gets one datagram in answer: when the payload starts with
// "echo " the rest of the payload, otherwise the hostname.
//
// Perf (TCP, for capstan-echo perf): the client's first line names the test.
//
//	stream\n      the server reads and discards until the client half-closes,
//	              then writes the number of bytes it read after the first line
//	              as a decimal line and closes
//	rr SIZE\n     SIZE is 1 to 1048576; the server reads SIZE bytes and writes
//	              them back, again and again until the client closes
//
// Any other first line gets a line "error: REASON" and the connection closes.
//
// # connect
//
// The client network-policy tests run inside pods. It exits 0 and prints the
// server's answer when the connection works, and exits 1 printing one reason line to
// stderr when it does not. The reason starts with a fixed word a test can match:
// TIMEOUT, REFUSED, UNREACHABLE, DNS, HTTP (a non-2xx status) or OTHER.
//
//	tcp   connects; prints the first line the server sends (the hostname for serve),
//	      if one arrives within the timeout. Connecting is success.
//	udp   sends "hostname" and prints the answer; no answer in time is TIMEOUT.
//	http  GET http://HOST:PORT/hostname and prints the body.
//
// # probe
//
// Many connects at once, for reachability matrices: each PROTO:HOST:PORT
// (PROTO is tcp, udp or http, as for connect) is tried in parallel with its
// own --timeout, and probe prints one line per target, in the order given:
// "PROTO:HOST:PORT OK ANSWER" or "PROTO:HOST:PORT FAIL REASON", with connect's
// answer or reason on one line. It exits 0 when every target has its line,
// whatever the results. With --stdin it reads lines of "ID TARGET..." from
// standard input and runs each at once, printing "ID START" as its probes
// begin, "ID INDEX RESULT" as each result comes and "ID END" after a line's
// last ("ID ERROR REASON" first for a
// line it cannot run), until its input ends: one exec into a pod serves a
// whole test, and a slow target holds up no other.
//
// # loop
//
// Requests to one address until --duration ends or SIGTERM: a new connection per
// request, or with --persistent (tcp) one connection that echoes a line each
// interval. It prints "FAIL <elapsed> <reason>" per failed request, "PROGRESS ..."
// every --report, "CONNECTED <backend>" per persistent connection, and finally
// "DONE requests=N failures=M backends=name:count,..."; it exits 1 on any failure.
//
// # perf
//
// A load generator for Service benchmarks, against serve's perf port. It runs
// until --duration ends (or SIGTERM; or, with --count N, until each connection
// has done N operations) and prints one JSON line:
//
//	{"test":"rr","target":"10.96.0.10:5201","connections":1,"size":1,
//	 "duration_s":10.001,"ops":123456,"bytes":246912,"errors":0,
//	 "ops_per_s":12344.5,"bits_per_s":197504,
//	 "latency_us":{"p50":70.1,"p90":85.3,"p99":130,"max":900.2},
//	 "cpu_s":3.21,"first_error":""}
//
// The tests, each on --connections connections (or workers) at once:
//
//	stream  sends 128 KiB writes as fast as it can, then half-closes and reads
//	        the server's count; ops are writes, bytes what the server counted
//	        (what was written, plus an error, when the count does not come),
//	        size is the write size; there is no latency (zeros)
//	rr      on one connection each: SIZE bytes out, SIZE bytes back, again;
//	        ops are round trips, latency is per round trip
//	crr     a new connection per operation, like netperf's TCP_CRR: dial, send
//	        a request, read the response, close; latency is from the start of
//	        the dial to the end of the response
//
// bytes counts payload: for rr and crr 2*SIZE per operation. bits_per_s is
// bytes*8/duration_s. Latencies are microseconds, percentiles to within 1%,
// max exact. cpu_s is perf's own user+system CPU time during the run (compare
// serve's /rusage). A dial, read or write that fails or takes longer than
// --timeout is an error; stream and rr then dial again, crr goes on with its
// next cycle. errors counts them and first_error is the first one's message.
// The host of HOST:PORT is looked up once. perf exits 0 with the JSON, and 1
// with the JSON when no operation completed and there were errors.
//
// # kubeapi
//
// GETs PATH of the Kubernetes API as the pod's service account, with
// client-go's in-cluster configuration, prints the HTTP status code and exits
// 0 for a 2xx answer, 1 otherwise: RBAC tests ask what a pod may read.
//
// Usage errors exit 2.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: capstan-echo COMMAND [flags]
commands:
  serve [--http-port 8080] [--tcp-port 9000] [--udp-port 9001] [--perf-port 5201]
  connect HOST:PORT [--protocol tcp|udp|http] [--timeout 2s]
  probe [--timeout 1s] PROTO:HOST:PORT... | probe [--timeout 1s] --stdin
  loop HOST:PORT [--protocol http|tcp|udp] [--interval 50ms] [--timeout 2s] [--duration 0] [--persistent] [--report 1s]
  perf HOST:PORT --test stream|rr|crr [--duration 10s] [--connections 1] [--size 1] [--timeout 2s] [--count 0]
  pause
  crash [--code 1] [--after 0s]
  hostname
  kubeapi PATH [--timeout 5s]
`

// run executes one subcommand and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(args, stdout, stderr)
	case "connect":
		return runConnect(args, stdout, stderr)
	case "probe":
		return runProbe(args, stdout, stderr)
	case "loop":
		return runLoop(args, stdout, stderr)
	case "perf":
		return runPerf(args, stdout, stderr)
	case "pause":
		return runPause(args, stdout, stderr)
	case "crash":
		return runCrash(args, stdout, stderr)
	case "hostname":
		return runHostname(args, stdout, stderr)
	case "kubeapi":
		return runKubeapi(args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "capstan-echo: unknown command %q\n%s", cmd, usage)
		return 2
	}
}

// parse parses flags that may sit before or after the positional arguments
// (connect HOST:PORT --protocol udp) and returns the positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		rest := fs.Args()
		// After "--" everything is positional.
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("capstan-echo "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// signalContext is cancelled by SIGTERM or SIGINT.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

func runPause(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("pause", stderr)
	if pos, err := parse(fs, args); err != nil || len(pos) != 0 {
		return usageError(stderr, "pause takes no arguments", err)
	}
	ctx, cancel := signalContext()
	defer cancel()
	<-ctx.Done()
	return 0
}

func runCrash(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("crash", stderr)
	code := fs.Int("code", 1, "exit code")
	after := fs.Duration("after", 0, "delay before exiting")
	if pos, err := parse(fs, args); err != nil || len(pos) != 0 {
		return usageError(stderr, "crash takes no arguments", err)
	}
	if *code < 0 || *code > 255 {
		return usageError(stderr, fmt.Sprintf("--code %d is out of range 0-255", *code), nil)
	}
	fmt.Fprintf(stdout, "crashing with code %d after %s\n", *code, *after)
	time.Sleep(*after)
	return *code
}

func runHostname(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("hostname", stderr)
	if pos, err := parse(fs, args); err != nil || len(pos) != 0 {
		return usageError(stderr, "hostname takes no arguments", err)
	}
	name, err := os.Hostname()
	if err != nil {
		fmt.Fprintf(stderr, "hostname: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, name)
	return 0
}

// usageError reports a bad command line. err is already printed by the flag
// package when it is non-nil.
func usageError(stderr io.Writer, msg string, err error) int {
	if err == flag.ErrHelp {
		return 0
	}
	if err == nil {
		fmt.Fprintf(stderr, "capstan-echo: %s\n", msg)
	}
	return 2
}
