package main

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRunProbe(t *testing.T) {
	_, ls := startServer(t)
	tcpAddr, udpAddr := closedPorts(t)
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	args := []string{"probe", "--timeout", "500ms",
		"tcp:" + ls.tcp.Addr().String(),
		"udp:" + ls.udp.LocalAddr().String(),
		"http:" + ls.http.Addr().String(),
		"tcp:" + tcpAddr,
		"udp:" + udpAddr,
		"udp:" + silent.LocalAddr().String(),
		"udp:" + silent.LocalAddr().String(),
		"udp:" + silent.LocalAddr().String(),
	}
	want := []string{
		"tcp:" + ls.tcp.Addr().String() + " OK pod-a",
		"udp:" + ls.udp.LocalAddr().String() + " OK pod-a",
		"http:" + ls.http.Addr().String() + " OK pod-a",
		"tcp:" + tcpAddr + " FAIL REFUSED",
		"udp:" + udpAddr + " FAIL REFUSED",
		"udp:" + silent.LocalAddr().String() + " FAIL TIMEOUT",
		"udp:" + silent.LocalAddr().String() + " FAIL TIMEOUT",
		"udp:" + silent.LocalAddr().String() + " FAIL TIMEOUT",
	}
	var stdout, stderr bytes.Buffer
	start := time.Now()
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("probe exit %d, stderr %q", code, stderr.String())
	}
	// Three silent targets time out together, not one after another.
	if took := time.Since(start); took > 1400*time.Millisecond {
		t.Errorf("probe took %v: targets are not tried in parallel", took)
	}
	if got := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("probe printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestProbeLinesFromStdin(t *testing.T) {
	_, ls := startServer(t)
	tcpAddr, _ := closedPorts(t)
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	slow := "udp:" + silent.LocalAddr().String()
	// The first line waits for its timeout; the others must not wait for it.
	in := strings.Join([]string{
		"r1 " + slow + " tcp:" + ls.tcp.Addr().String(),
		"",
		"r2 tcp:" + tcpAddr + "  udp:" + ls.udp.LocalAddr().String(),
		"r3 nonsense",
		"r4",
	}, "\n") + "\n"
	var stdout, stderr bytes.Buffer
	if code := probeMain([]string{"--stdin", "--timeout", "500ms"}, strings.NewReader(in), &stdout, &stderr); code != 0 {
		t.Fatalf("probe --stdin exit %d, stderr %q", code, stderr.String())
	}
	byID := map[string][]string{}
	var order []string
	for _, l := range strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n") {
		id, rest, _ := strings.Cut(l, " ")
		byID[id] = append(byID[id], rest)
		order = append(order, l)
	}
	sortedResults := func(id string) string {
		rs := byID[id]
		if len(rs) == 0 || rs[len(rs)-1] != "END" {
			return fmt.Sprintf("%q (no END last)", rs)
		}
		rs = slices.Clone(rs[:len(rs)-1])
		slices.Sort(rs)
		return strings.Join(rs, "|")
	}
	for id, want := range map[string]string{
		"r1": "0 " + slow + " FAIL TIMEOUT|1 tcp:" + ls.tcp.Addr().String() + " OK pod-a|START",
		"r2": "0 tcp:" + tcpAddr + " FAIL REFUSED|1 udp:" + ls.udp.LocalAddr().String() + " OK pod-a|START",
		"r3": `ERROR "nonsense" is not PROTO:HOST:PORT`,
		"r4": "START",
	} {
		if got := sortedResults(id); got != want {
			t.Errorf("%s: %s, want %s", id, got, want)
		}
	}
	if len(byID) != 4 {
		t.Errorf("output for %d IDs, want 4:\n%s", len(byID), stdout.String())
	}
	// Each line starts before its results.
	for id, rs := range byID {
		if id != "r3" && rs[0] != "START" {
			t.Errorf("%s: first line %q, want START", id, rs[0])
		}
	}
	// The slow target's line ends last.
	if last := order[len(order)-1]; last != "r1 END" {
		t.Errorf("last line %q, want r1 END: a slow target held the others up\n%s", last, stdout.String())
	}
	if code := probeMain([]string{"--stdin", "tcp:" + tcpAddr}, strings.NewReader(""), &stdout, &stderr); code != 2 {
		t.Errorf("probe --stdin with targets: exit %d, want 2", code)
	}
}

func TestRunProbeUsage(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"probe"}, "capstan-echo: probe takes 1 to 4096 PROTO:HOST:PORT targets\n"},
		{[]string{"probe", "127.0.0.1:80"}, "capstan-echo: usage: unknown protocol \"127.0.0.1\" (tcp, udp or http)\n"},
		{[]string{"probe", "tcp"}, "capstan-echo: \"tcp\" is not PROTO:HOST:PORT\n"},
		{[]string{"probe", "sctp:10.0.0.1:80"}, "capstan-echo: usage: unknown protocol \"sctp\" (tcp, udp or http)\n"},
		{[]string{"probe", "tcp:nohost"}, "capstan-echo: usage: \"nohost\" is not HOST:PORT\n"},
		{[]string{"probe", "--timeout", "0s", "tcp:10.0.0.1:80"}, "capstan-echo: --timeout must be positive\n"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != 2 || stdout.Len() != 0 || stderr.String() != tc.stderr {
			t.Errorf("run %q = %d, stdout %q, stderr %q; want 2, \"\", %q", tc.args, code, stdout.String(), stderr.String(), tc.stderr)
		}
	}
}

func TestOneLine(t *testing.T) {
	if got := oneLine("a\nb \r\n c\n"); got != "a b c" {
		t.Errorf("oneLine = %q", got)
	}
}
