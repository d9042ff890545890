// Package policybench measures what NetworkPolicy costs traffic on a local 2-node eBPF cluster
// (`capstan up`): the new-connection rate and the request/response rate, with latency
// percentiles, to a server pod selected by policies of 0, 100 and 1,000 ingress rules, from a
// client on another node and one on the server's node. It is what `capstan bench policy` (and
// `make bench`) runs; the programs' own per-packet cost is BenchmarkPolicy in dataplane/ebpf.
package policybench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/bench/perfcluster"
)

// MaxRules is the most rules one run installs.
const MaxRules = 20000

// Config is what Run needs. Binary, EchoBinary and Images are required.
type Config struct {
	perfcluster.Options
	// Rules are the ingress rule counts selecting the server while measuring, in order. 0 is
	// no policy at all (the pod is not isolated); N > 0 is N rules that never match the
	// clients plus one that admits them.
	Rules []int
	// RulesPerPolicy is how many of the N rules each NetworkPolicy holds.
	RulesPerPolicy int
	// Rounds of every rule count in turn (0, 100, 1000, 0, 100, ...): the table shows each
	// figure's median run, so that a burst of other load on the machine moves it less.
	Rounds int
}

func (c *Config) setDefaults() error {
	if len(c.Rules) == 0 {
		c.Rules = []int{0, 100, 1000}
	}
	for _, n := range c.Rules {
		if n < 0 || n > MaxRules {
			return fmt.Errorf("bench policy: rule count %d: want 0 to %d", n, MaxRules)
		}
	}
	if c.RulesPerPolicy == 0 {
		c.RulesPerPolicy = 10
	}
	if c.RulesPerPolicy < 1 || c.RulesPerPolicy > 1000 {
		return fmt.Errorf("bench policy: %d rules per policy: want 1 to 1000", c.RulesPerPolicy)
	}
	if c.Rounds == 0 {
		c.Rounds = 1
	}
	if c.Rounds < 1 || c.Rounds > 20 {
		return fmt.Errorf("bench policy: %d rounds: want 1 to 20", c.Rounds)
	}
	return c.Options.SetDefaults("policy")
}

// Report is everything one run measured; it is written as results.json.
type Report struct {
	perfcluster.RunInfo
	RulesPerPolicy int           `json:"rulesPerPolicy"`
	Rounds         int           `json:"rounds"`
	Levels         []Level       `json:"levels"`
	Results        []Measurement `json:"results"`
}

// Level is one rule count as the server's node enforced it, in one round.
type Level struct {
	Round    int `json:"round"`
	Rules    int `json:"rules"`
	Policies int `json:"policies"`
	// Entries are the server's ingress entries in its node's policy maps.
	Entries int `json:"entries"`
	// Writes is how long the API writes of the policies took; Enforced is from the last write
	// until the server's node's maps held every entry (read every 20 ms). Probes then check that
	// the clients get through and a pod no rule admits does not.
	Writes   time.Duration `json:"writesNs"`
	Enforced time.Duration `json:"enforcedAfterLastWriteNs"`
}

// Measurement is one load-generator run.
type Measurement struct {
	Round  int              `json:"round"`
	Rules  int              `json:"rules"`
	Path   string           `json:"path"` // e.g. "pod -> pod (cross node)"
	Test   string           `json:"test"` // rr, crr
	Result perfcluster.Perf `json:"result"`
	// ServerCPU is the server process's CPU seconds during the run.
	ServerCPU float64 `json:"serverCpuS"`
}

// Run brings a 2-node eBPF cluster up, measures at every rule count, takes the cluster down,
// and writes the table and results.json.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rep := &Report{RunInfo: cfg.NewRunInfo(), RulesPerPolicy: cfg.RulesPerPolicy, Rounds: cfg.Rounds}
	// Distinct from the other suites' clusters (services 172.27, netpol 172.28, e2e 172.29,
	// capstan up 172.30), so they may run side by side.
	cc := cluster.Config{
		Name: fmt.Sprintf("pol%04x", rand.IntN(1<<16)), DataDir: filepath.Join(cfg.DataDir, "data"), RunDir: cfg.RunDir,
		Nodes: 2, Mode: "ebpf", Subnet: netip.MustParsePrefix(fmt.Sprintf("172.26.%d.0/24", 1+rand.IntN(250))),
		Port: 30000 + rand.IntN(2700), Binary: cfg.Binary, Images: cfg.Images, Log: cfg.Log,
	}
	cfg.Log.Info("bringing a cluster up", "name", cc.Name)
	runErr := perfcluster.With(ctx, cc, cfg.EchoBinary, func(c *perfcluster.Cluster) error {
		w, err := newWorkload(ctx, cfg, c)
		if err != nil {
			return err
		}
		// The rule counts measured so far are still worth their table.
		return w.measure(ctx, rep)
	})
	writeTable(cfg.Out, rep)
	if _, err := perfcluster.WriteResults(cfg.OutDir, "policy", rep.Started, rep); err != nil {
		return rep, errors.Join(runErr, err)
	}
	return rep, runErr
}

// baseline is the rule count the others are compared with: the fewest measured.
func baseline(rep *Report) int {
	if len(rep.Levels) == 0 {
		return 0
	}
	return slices.MinFunc(rep.Levels, func(a, b Level) int { return a.Rules - b.Rules }).Rules
}
