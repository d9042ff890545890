package policybench

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capstan-net/capstan/test/bench/perfcluster"
)

func TestPolicies(t *testing.T) {
	for _, tc := range []struct{ n, per, wantPolicies int }{
		{1, 10, 2}, {100, 10, 11}, {1000, 10, 101}, {25, 10, 4}, {MaxRules, 7, MaxRules/7 + 2},
	} {
		pols := policies(tc.n, tc.per)
		if len(pols) != tc.wantPolicies {
			t.Errorf("%d rules, %d per policy: %d policies, want %d", tc.n, tc.per, len(pols), tc.wantPolicies)
		}
		rules := 0
		peers := map[string]bool{}
		for _, p := range pols[:len(pols)-1] {
			if len(p.Spec.Ingress) > tc.per {
				t.Errorf("%s has %d rules, want at most %d", p.Name, len(p.Spec.Ingress), tc.per)
			}
			for _, r := range p.Spec.Ingress {
				rules++
				cidr := r.From[0].IPBlock.CIDR
				pfx, err := netip.ParsePrefix(cidr)
				if err != nil || pfx.Bits() != 32 || peers[cidr] || netip.MustParsePrefix("10.244.0.0/16").Contains(pfx.Addr()) {
					t.Fatalf("%s: peer %s: %v (a repeat: %v)", p.Name, cidr, err, peers[cidr])
				}
				peers[cidr] = true
			}
		}
		if rules != tc.n {
			t.Errorf("%d rules installed, want %d", rules, tc.n)
		}
		admit := pols[len(pols)-1]
		if admit.Name != admitName || len(admit.Spec.Ingress) != 1 || admit.Spec.Ingress[0].From[0].PodSelector.MatchLabels["role"] != clientRole ||
			admit.Spec.Ingress[0].Ports[0].Port.IntValue() != perfcluster.PerfPort {
			t.Errorf("last policy is not the one admitting the clients: %+v", admit)
		}
	}
}

func result(round, rules int, path, test string, ops float64) Measurement {
	p := perfcluster.Perf{Test: test, Ops: int64(ops * 5), OpsPerS: ops, CPUS: 1}
	p.Latency.P50, p.Latency.P90, p.Latency.P99 = 200, 300, 500
	return Measurement{Round: round, Rules: rules, Path: path, Test: test, Result: p, ServerCPU: 1}
}

func TestTable(t *testing.T) {
	rep := &Report{RunInfo: perfcluster.RunInfo{Started: time.Date(2026, 11, 23, 1, 2, 3, 0, time.UTC), Duration: "5s", Connections: 1},
		RulesPerPolicy: 10, Rounds: 3,
		Levels: []Level{
			{Round: 1, Rules: 0}, {Round: 1, Rules: 1000, Policies: 101, Entries: 1002, Writes: time.Second, Enforced: 1500 * time.Millisecond},
			{Round: 2, Rules: 0}, {Round: 2, Rules: 1000, Policies: 101, Entries: 1002, Writes: time.Second, Enforced: 1200 * time.Millisecond},
			{Round: 3, Rules: 0}, {Round: 3, Rules: 1000, Policies: 101, Entries: 1002, Writes: time.Second, Enforced: 1300 * time.Millisecond},
		}}
	for round, ops := range [][4]float64{{4000, 20000, 3000, 20000}, {1000, 21000, 2800, 19000}, {4100, 19000, 2900, 22000}} {
		rep.Results = append(rep.Results,
			result(round+1, 0, pathCross, "crr", ops[0]), result(round+1, 0, pathCross, "rr", ops[1]),
			result(round+1, 1000, pathCross, "crr", ops[2]), result(round+1, 1000, pathCross, "rr", ops[3]))
	}
	var out bytes.Buffer
	writeTable(&out, rep)
	for _, want := range []string{"5s per run, 1 connection(s), 10 rules per policy, 3 round(s)", "VS 0 RULES",
		// medians: crr 4000 against 2900, rr 20000 against 20000
		"1000   crr   pod -> pod (cross node)  2900", "0.725x", "1.000x", "3 (1000-4100)", "0 rules: no NetworkPolicy",
		"1000 rules: 101 policies written in 1s, 1002 ingress entries in the server's maps, enforced 1.2s-1.5s after the last write"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	dir, err := perfcluster.WriteResults(t.TempDir(), "policy", rep.Started, rep)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(dir) != "policy-20261123-010203" {
		t.Errorf("results in %s", dir)
	}
	data, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil || len(back.Results) != 12 || back.Levels[1].Entries != 1002 || back.Duration != "5s" {
		t.Errorf("results.json does not read back: %v %+v", err, back)
	}
}

func TestConfigErrors(t *testing.T) {
	self, _ := os.Executable()
	opts := perfcluster.Options{Binary: self, EchoBinary: self, Images: []string{self}, DataDir: t.TempDir()}
	for _, c := range []Config{
		{},
		{Options: perfcluster.Options{Binary: "/nonexistent", EchoBinary: "/nonexistent", Images: []string{"x"}}},
		{Options: perfcluster.Options{Binary: self, EchoBinary: self, Images: []string{self}, Duration: time.Millisecond}},
		{Options: opts, Rules: []int{0, -1}},
		{Options: opts, Rules: []int{MaxRules + 1}},
		{Options: opts, RulesPerPolicy: -1},
		{Options: opts, Rounds: 21},
	} {
		if err := c.setDefaults(); err == nil || !strings.HasPrefix(err.Error(), "bench policy: ") {
			t.Errorf("%+v: want an error of bench policy, got %v", c, err)
		}
	}
	c := Config{Options: opts}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if len(c.Rules) != 3 || c.Rules[2] != 1000 || c.RulesPerPolicy != 10 || c.Rounds != 1 || c.Duration != 5*time.Second {
		t.Errorf("defaults: %+v", c)
	}
}
