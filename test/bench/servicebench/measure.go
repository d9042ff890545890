package servicebench

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/bench/perfcluster"
)

// run is one load-generator run: the path it measures, and how to reach it.
type run struct {
	path, test string
	outside    bool
	addr       string
	server     string // the pod whose CPU is counted
}

// Paths measured, in table order. "direct" runs are the baselines the Service paths are
// compared with.
const (
	pathDirectSame  = "pod -> pod (same node, direct)"
	pathDirectCross = "pod -> pod (cross node, direct)"
	pathCIPSame     = "pod -> ClusterIP (same node)"
	pathCIPCross    = "pod -> ClusterIP (cross node)"
	pathNodePort    = "outside -> NodePort"
)

func (w *workload) runs() []run {
	p := ":" + strconv.Itoa(perfPort)
	np := fmt.Sprintf("%s:%d", w.c.NodeIP[w.nodes[0]], w.nodePort)
	return []run{
		{pathDirectSame, "stream", false, w.pods["srv-a"].IP + p, "srv-a"},
		{pathCIPSame, "stream", false, w.clusterIPs["local"] + p, "srv-a"},
		{pathDirectCross, "stream", false, w.pods["srv-b"].IP + p, "srv-b"},
		{pathCIPCross, "stream", false, w.clusterIPs["remote"] + p, "srv-b"},
		{pathNodePort, "stream", true, np, "srv-b"},
		{pathDirectCross, "rr", false, w.pods["srv-b"].IP + p, "srv-b"},
		{pathCIPCross, "rr", false, w.clusterIPs["remote"] + p, "srv-b"},
		{pathDirectCross, "crr", false, w.pods["srv-b"].IP + p, "srv-b"},
		{pathCIPCross, "crr", false, w.clusterIPs["remote"] + p, "srv-b"},
		{pathNodePort, "crr", true, np, "srv-b"},
	}
}

// measure runs every path at every Service count, then the programming, update and
// footprint figures at the largest count.
func (w *workload) measure(ctx context.Context, mode string) (*ModeReport, error) {
	mr := &ModeReport{Mode: mode}
	for _, n := range w.cfg.ServiceCounts {
		prog, err := w.fill(ctx, n)
		if err != nil {
			return nil, err
		}
		if prog != nil {
			w.cfg.Log.Info("services installed", "mode", mode, "services", n, "writes", prog.Writes, "then answering after", prog.AfterLastWrite)
			mr.Programming = prog
		}
		runs := w.runs()
		samples := make([][]Measurement, len(runs))
		for rep := range w.cfg.Repeat {
			for i, r := range runs {
				m, err := w.measureOne(ctx, mode, n, r)
				if err != nil {
					return nil, fmt.Errorf("%d services, %s %s (run %d): %w", n, r.path, r.test, rep+1, err)
				}
				samples[i] = append(samples[i], m)
			}
		}
		for _, ms := range samples {
			mr.Results = append(mr.Results, median(ms))
		}
	}
	var err error
	if mr.Update, err = w.update(ctx); err != nil {
		return nil, fmt.Errorf("endpoint update: %w", err)
	}
	mr.Footprint = w.footprint(ctx, mode)
	return mr, nil
}

// measureOne runs the load generator once on r.
func (w *workload) measureOne(ctx context.Context, mode string, n int, r run) (Measurement, error) {
	pr := perfcluster.PerfRun{Test: r.test, Addr: r.addr, Duration: w.cfg.Duration, Connections: w.cfg.Connections}
	if r.outside {
		pr.Netns = w.c.Config.Name + "-outside"
	} else {
		pr.Namespace, pr.Pod = perfNS, "client"
	}
	log := w.cfg.Log.With("mode", mode, "services", n, "path", r.path, "test", r.test)
	res, cpu, err := w.c.Measure(ctx, pr, w.pods[r.server].UID, log)
	if err != nil {
		return Measurement{}, err
	}
	w.cfg.Log.Info("measured", "mode", mode, "services", n, "path", r.path, "test", r.test, "ops/s", int(res.OpsPerS), "bits/s", int64(res.BitsPerS))
	return Measurement{Services: n, Path: r.path, Test: r.test, Result: res, ServerCPU: cpu}, nil
}

// figure is what a run is ranked by: throughput for stream, the operation rate otherwise.
func figure(m Measurement) float64 {
	if m.Test == "stream" {
		return m.Result.BitsPerS
	}
	return m.Result.OpsPerS
}

// median returns the run with the median figure (the lower middle one of an even count),
// whole, so its latencies and CPU go with it, and every run's figure in Runs.
func median(ms []Measurement) Measurement {
	figs := make([]float64, len(ms))
	for i, m := range ms {
		figs[i] = figure(m)
	}
	sorted := slices.Clone(ms)
	slices.SortStableFunc(sorted, func(a, b Measurement) int { return cmp.Compare(figure(a), figure(b)) })
	m := sorted[(len(sorted)-1)/2]
	m.Runs = figs
	return m
}

// footprint reads the first node's agent memory and what its mode programmed.
func (w *workload) footprint(ctx context.Context, mode string) Footprint {
	f := Footprint{Services: w.fillers + 1}
	f.AgentRSS = rss(filepath.Join(w.c.Config.DataDir, "cluster", w.nodes[0]+".pid"))
	f.KubeProxyRSS = rss(filepath.Join(w.c.Config.DataDir, "cluster", w.nodes[0]+"-kube-proxy.pid"))
	switch mode {
	case "ebpf":
		dir := filepath.Join("/sys/fs/bpf/capstan", w.nodes[0])
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() {
				continue
			}
			m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
			if err != nil {
				continue
			}
			if info, err := m.Info(); err == nil {
				if b, ok := info.Memlock(); ok {
					f.BPFMapBytes += b
					f.BPFMaps++
				}
			}
			m.Close()
		}
	case "iptables", "none":
		cmd, done, err := cluster.NodeCommand(w.c.Config, w.nodes[0], "iptables-save")
		if err == nil {
			defer done()
			if out, err := cmd.Output(); err == nil {
				f.IptablesBytes = len(out)
				for _, l := range strings.Split(string(out), "\n") {
					if strings.HasPrefix(l, "-A ") {
						f.IptablesRules++
					}
				}
			}
		}
	}
	return f
}

// rss is the resident memory of the process whose pid file is given, or 0.
func rss(pidFile string) uint64 {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return 0
	}
	status, err := os.ReadFile("/proc/" + strings.TrimSpace(string(data)) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseUint(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
