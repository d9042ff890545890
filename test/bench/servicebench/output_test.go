package servicebench

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capstan-net/capstan/test/bench/perfcluster"
)

func perf(test string, ops int64, bps float64) perfcluster.Perf {
	p := perfcluster.Perf{Test: test, Ops: ops, OpsPerS: float64(ops) / 5, BitsPerS: bps, CPUS: 1}
	p.Latency.P50, p.Latency.P90, p.Latency.P99 = 50, 80, 120
	return p
}

func sampleReport() *Report {
	mk := func(mode string, svcFactor float64, prog time.Duration) *ModeReport {
		mr := &ModeReport{Mode: mode, Programming: &Programming{Services: 10000, AfterLastWrite: prog}, Update: 300 * time.Millisecond}
		for _, n := range []int{1, 10000} {
			f := 1.0
			if n == 10000 {
				f = svcFactor
			}
			mr.Results = append(mr.Results,
				Measurement{Services: n, Path: pathDirectCross, Test: "stream", Result: perf("stream", 100, 10e9)},
				Measurement{Services: n, Path: pathCIPCross, Test: "stream", Result: perf("stream", 100, 9.8e9*f)},
				Measurement{Services: n, Path: pathDirectCross, Test: "crr", Result: perf("crr", 50000, 0)},
				Measurement{Services: n, Path: pathCIPCross, Test: "crr", Result: perf("crr", int64(49000*f), 0), ServerCPU: 2},
			)
		}
		return mr
	}
	return &Report{RunInfo: perfcluster.RunInfo{Started: time.Date(2026, 11, 23, 1, 2, 3, 0, time.UTC), Duration: "5s", Connections: 1},
		Modes: []*ModeReport{mk("ebpf", 0.99, 400*time.Millisecond), mk("iptables", 0.5, 3*time.Second)}}
}

func TestTargets(t *testing.T) {
	got := strings.Join(targets(sampleReport()), "\n")
	for _, want := range []string{
		"target eBPF pod -> ClusterIP (cross node) stream >= 0.95x direct at 1 services: 0.980x met",
		"target eBPF pod -> ClusterIP (cross node) crr >= 0.95x direct at 1 services: 0.980x met",
		"target eBPF connection rate with 10000 services within 5% of 1: 0.990x met",
		"target eBPF ahead of iptables on every figure at 10000 services: MISSED",
		"target eBPF programs 10000 services within 1 s of the last write: 400ms met (iptables: 3s)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("targets lack %q:\n%s", want, got)
		}
	}
}

func TestTableAndFiles(t *testing.T) {
	rep := sampleReport()
	var out bytes.Buffer
	writeTable(&out, rep)
	for _, want := range []string{"EBPF", "IPTABLES", "9.80 Gbit/s", "p50 50 p90 80 p99 120 µs", "one EndpointSlice update followed in 300ms"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	dir := t.TempDir()
	if err := writeFiles(dir, rep); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(filepath.Join(dir, "services-20261123-010203", "chart.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(svg), "<svg") || strings.Count(string(svg), "<rect") < 16 {
		t.Fatalf("chart has %d bars: %.200s", strings.Count(string(svg), "<rect"), svg)
	}
	if _, err := os.Stat(filepath.Join(dir, "services-20261123-010203", "results.json")); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{
		{},
		{Options: perfcluster.Options{Binary: "/nonexistent", EchoBinary: "/nonexistent", Images: []string{"x"}}},
	} {
		if err := c.setDefaults(); err == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
	self, _ := os.Executable()
	c := Config{Options: perfcluster.Options{Binary: self, EchoBinary: self, Images: []string{self}}, Modes: []string{"ipvs"}}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), "ipvs") {
		t.Errorf("bad mode: %v", err)
	}
}
