// Command capstan-echo is the workload in Capstan's test images, in the spirit of
// Kubernetes' agnhost: one static binary whose subcommands are a server, a client,
// and a few process behaviours that node and network tests need.
//
//	capstan-echo serve [--http-port 8080] [--tcp-port 9000] [--udp-port 9001]
//	capstan-echo connect HOST:PORT [--protocol tcp|udp|http] [--timeout 2s]
//	capstan-echo loop HOST:PORT [--protocol http|tcp|udp] [--interval 50ms] [--duration 0] [--persistent]
//	capstan-echo pause
//	capstan-echo crash [--code 1] [--after 0s]
//	capstan-echo hostname
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
// # loop
//
// Requests to one address until --duration ends or SIGTERM: a new connection per
// request, or with --persistent (tcp) one connection that echoes a line each
// interval. It prints "FAIL <elapsed> <reason>" per failed request, "PROGRESS ..."
// every --report, "CONNECTED <backend>" per persistent connection, and finally
// "DONE requests=N failures=M backends=name:count,..."; it exits 1 on any failure.
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
  serve [--http-port 8080] [--tcp-port 9000] [--udp-port 9001]
  connect HOST:PORT [--protocol tcp|udp|http] [--timeout 2s]
  loop HOST:PORT [--protocol http|tcp|udp] [--interval 50ms] [--timeout 2s] [--duration 0] [--persistent] [--report 1s]
  pause
  crash [--code 1] [--after 0s]
  hostname
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
	case "loop":
		return runLoop(args, stdout, stderr)
	case "pause":
		return runPause(args, stdout, stderr)
	case "crash":
		return runCrash(args, stdout, stderr)
	case "hostname":
		return runHostname(args, stdout, stderr)
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
