// Package servicebench benchmarks Service throughput, connection rate and latency on a local
// 2-node cluster (`capstan up`), once per service mode (eBPF, iptables), with the same pods
// and the same load generator (`capstan-echo perf`), as the figures users compare against
// kube-proxy. It is what `capstan bench services` (and `make bench`) runs.
package servicebench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/bench/perfcluster"
)

// Config is what Run needs. Binary, EchoBinary and Images are required.
type Config struct {
	perfcluster.Options
	// Modes to compare, in order: "ebpf", "iptables", and "none" (the upstream kube-proxy
	// at KubeProxy in iptables mode, Capstan keeping only pod routing).
	Modes     []string
	KubeProxy string
	// ServiceCounts are the numbers of Services installed while measuring; the measured
	// Services are among them and last in any ordered rule list.
	ServiceCounts []int
	// Endpoints per filler Service are drawn from [EndpointsMin, EndpointsMax].
	EndpointsMin, EndpointsMax int
	// Repeat is how many times each figure is measured; the table shows the median run.
	// The paths take turns, so a slow spell of the shared machine touches every row alike
	// instead of the few measured during it.
	Repeat int
}

func (c *Config) setDefaults() error {
	if len(c.Modes) == 0 {
		c.Modes = []string{"ebpf", "iptables"}
		if c.KubeProxy != "" {
			c.Modes = append(c.Modes, "none")
		}
	}
	for _, m := range c.Modes {
		if m != "ebpf" && m != "iptables" && m != "none" {
			return fmt.Errorf("bench services: mode %q: want ebpf, iptables or none", m)
		}
		if m == "none" && c.KubeProxy == "" {
			return errors.New("bench services: mode none measures the upstream kube-proxy: give its binary (--kube-proxy)")
		}
	}
	if len(c.ServiceCounts) == 0 {
		c.ServiceCounts = []int{1, 1000, 10000}
	}
	for _, n := range c.ServiceCounts {
		if n < 1 || n > 50000 {
			return fmt.Errorf("bench services: service count %d: want 1 to 50000", n)
		}
	}
	if c.EndpointsMin == 0 {
		c.EndpointsMin = 2
	}
	if c.EndpointsMax == 0 {
		c.EndpointsMax = 10
	}
	if c.EndpointsMin < 1 || c.EndpointsMax < c.EndpointsMin || c.EndpointsMax > 100 {
		return fmt.Errorf("bench services: endpoints per service %d-%d: want 1 <= min <= max <= 100", c.EndpointsMin, c.EndpointsMax)
	}
	if c.Repeat == 0 {
		c.Repeat = 3
	}
	if c.Repeat < 1 || c.Repeat > 20 {
		return fmt.Errorf("bench services: repeat %d: want 1 to 20", c.Repeat)
	}
	return c.Options.SetDefaults("services")
}

// Report is everything one run measured; it is written as JSON beside the chart.
type Report struct {
	perfcluster.RunInfo
	// Repeat is how many runs each figure had; the results are their medians.
	Repeat int           `json:"repeat"`
	Modes  []*ModeReport `json:"modes"`
}

// ModeReport is one mode's figures.
type ModeReport struct {
	Mode    string        `json:"mode"`
	Results []Measurement `json:"results"`
	// Programming is the time from the last write of the largest Service count to its
	// last Service answering, with the writes' own duration beside it.
	Programming *Programming `json:"programming,omitempty"`
	// Update is from one EndpointSlice update (largest count installed) to traffic following it.
	Update time.Duration `json:"endpointUpdateNs"`
	// Footprint of the node's service implementation at the largest count.
	Footprint Footprint `json:"footprint"`
}

// Programming times the installation of many Services.
type Programming struct {
	Services       int           `json:"services"`
	Writes         time.Duration `json:"writesNs"`
	AfterLastWrite time.Duration `json:"afterLastWriteNs"`
	FromFirstWrite time.Duration `json:"fromFirstWriteNs"`
}

// Footprint is the daemon's memory and the size of what it programmed.
type Footprint struct {
	Services      int    `json:"services"`
	AgentRSS      uint64 `json:"agentRssBytes"`
	KubeProxyRSS  uint64 `json:"kubeProxyRssBytes,omitempty"`
	BPFMapBytes   uint64 `json:"bpfMapBytes,omitempty"`
	BPFMaps       int    `json:"bpfMaps,omitempty"`
	IptablesRules int    `json:"iptablesRules,omitempty"`
	IptablesBytes int    `json:"iptablesBytes,omitempty"`
}

// Measurement is one load-generator run.
type Measurement struct {
	Services int              `json:"services"`
	Path     string           `json:"path"` // e.g. "pod -> ClusterIP (cross node)"
	Test     string           `json:"test"` // stream, rr, crr
	Result   perfcluster.Perf `json:"result"`
	// ServerCPU is the server process's CPU seconds during the run.
	ServerCPU float64 `json:"serverCpuS"`
	// Runs is the figure of every run (bits/s for stream, operations/s otherwise), in the
	// order measured; Result is the median one's.
	Runs []float64 `json:"runs,omitempty"`
}

// Run measures every mode in turn and writes the table, JSON and SVG.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rep := &Report{RunInfo: cfg.NewRunInfo(), Repeat: cfg.Repeat}
	var runErr error
	for _, mode := range cfg.Modes {
		mr, err := runMode(ctx, cfg, mode)
		if err != nil {
			// The modes measured so far are still worth their table.
			runErr = fmt.Errorf("%s mode: %w", mode, err)
			break
		}
		rep.Modes = append(rep.Modes, mr)
	}
	writeTable(cfg.Out, rep)
	if err := writeFiles(cfg.OutDir, rep); err != nil {
		return rep, errors.Join(runErr, err)
	}
	return rep, runErr
}

// runMode brings a 2-node cluster up in mode, measures, and takes it down.
func runMode(ctx context.Context, cfg Config, mode string) (mr *ModeReport, err error) {
	cc := cluster.Config{
		Name: fmt.Sprintf("bench%04x", rand.IntN(1<<16)), DataDir: filepath.Join(cfg.DataDir, mode), RunDir: filepath.Join(cfg.RunDir, mode),
		Nodes: 2, Mode: mode, Subnet: netip.MustParsePrefix(fmt.Sprintf("172.27.%d.0/24", 1+rand.IntN(250))),
		Port: 20000 + rand.IntN(10000), Binary: cfg.Binary, Images: cfg.Images, Log: cfg.Log,
	}
	if mode == "none" {
		cc.KubeProxy = cfg.KubeProxy
	}
	cfg.Log.Info("bringing a cluster up", "mode", mode, "name", cc.Name)
	err = perfcluster.With(ctx, cc, cfg.EchoBinary, func(c *perfcluster.Cluster) error {
		w, err := newWorkload(ctx, cfg, c)
		if err != nil {
			return err
		}
		mr, err = w.measure(ctx, mode)
		return err
	})
	return mr, err
}
