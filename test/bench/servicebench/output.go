package servicebench

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/capstan-net/capstan/test/bench/perfcluster"
	"github.com/capstan-net/capstan/test/bench/podbench"
)

// key names one figure across modes.
type key struct {
	services   int
	path, test string
}

func index(mr *ModeReport) map[key]Measurement {
	out := map[key]Measurement{}
	for _, m := range mr.Results {
		out[key{m.Services, m.Path, m.Test}] = m
	}
	return out
}

// value is the figure compared for a test: throughput for stream, operations for the rest.
func value(m Measurement) float64 {
	if m.Test == "stream" {
		return m.Result.BitsPerS
	}
	return m.Result.OpsPerS
}

func format(m Measurement) string {
	if m.Test == "stream" {
		return fmt.Sprintf("%.2f Gbit/s", m.Result.BitsPerS/1e9)
	}
	l := m.Result.Latency
	s := fmt.Sprintf("%.0f/s  p50 %.0f p90 %.0f p99 %.0f µs", m.Result.OpsPerS, l.P50, l.P90, l.P99)
	if m.Result.Ops > 0 {
		// CPU seconds per 100,000 operations: client + server.
		per := 1e5 / float64(m.Result.Ops)
		s += fmt.Sprintf("  cpu/100k %.1f+%.1f s", m.Result.CPUS*per, m.ServerCPU*per)
	}
	if m.Result.Errors > 0 {
		s += fmt.Sprintf("  (%d errors)", m.Result.Errors)
	}
	return s
}

// modeLabel names a mode for people: "none" is measured with the upstream kube-proxy.
func modeLabel(mode string) string {
	if mode == "none" {
		return "kube-proxy"
	}
	return mode
}

func writeTable(out io.Writer, rep *Report) {
	fmt.Fprintf(out, "capstan bench services: %s; median of %d run(s) each\n\n", rep.RunInfo, max(rep.Repeat, 1))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	header := "SERVICES\tPATH\tTEST"
	for _, mr := range rep.Modes {
		header += "\t" + strings.ToUpper(modeLabel(mr.Mode))
	}
	fmt.Fprintln(tw, header)
	idx := make([]map[key]Measurement, len(rep.Modes))
	for i, mr := range rep.Modes {
		idx[i] = index(mr)
	}
	if len(rep.Modes) > 0 {
		for _, m := range rep.Modes[0].Results {
			k := key{m.Services, m.Path, m.Test}
			row := fmt.Sprintf("%d\t%s\t%s", k.services, k.path, k.test)
			for i := range rep.Modes {
				if x, ok := idx[i][k]; ok {
					row += "\t" + format(x)
				} else {
					row += "\t-"
				}
			}
			fmt.Fprintln(tw, row)
		}
	}
	tw.Flush()
	fmt.Fprintln(out)
	for _, mr := range rep.Modes {
		if p := mr.Programming; p != nil {
			fmt.Fprintf(out, "%s: %d Services written in %s, all answering %s after the last write (%s from the first)\n",
				mr.Mode, p.Services, p.Writes.Round(time.Millisecond), p.AfterLastWrite.Round(time.Millisecond), p.FromFirstWrite.Round(time.Millisecond))
		}
		fmt.Fprintf(out, "%s: one EndpointSlice update followed in %s; ", mr.Mode, mr.Update.Round(time.Millisecond))
		f := mr.Footprint
		fmt.Fprintf(out, "agent RSS %.1f MiB", float64(f.AgentRSS)/(1<<20))
		if f.KubeProxyRSS > 0 {
			fmt.Fprintf(out, ", kube-proxy RSS %.1f MiB", float64(f.KubeProxyRSS)/(1<<20))
		}
		if f.BPFMaps > 0 {
			fmt.Fprintf(out, ", %d BPF maps %.1f MiB", f.BPFMaps, float64(f.BPFMapBytes)/(1<<20))
		}
		if f.IptablesRules > 0 {
			fmt.Fprintf(out, ", %d iptables rules (%.1f MiB of iptables-save)", f.IptablesRules, float64(f.IptablesBytes)/(1<<20))
		}
		fmt.Fprintf(out, " with %d Services\n", f.Services)
	}
	fmt.Fprintln(out)
	for _, t := range targets(rep) {
		fmt.Fprintln(out, t)
	}
}

// pairedRatio compares a Service path with its direct baseline. With repeated runs it is the
// median of the ratios of runs measured back to back (run i of one against run i of the
// other), which a slow spell of the shared machine affects alike; otherwise the ratio of the
// two figures. pairs lists each pair's ratio.
func pairedRatio(s, d Measurement) (float64, []string) {
	if len(s.Runs) < 2 || len(s.Runs) != len(d.Runs) {
		return value(s) / value(d), nil
	}
	var rs []float64
	var pairs []string
	for i := range s.Runs {
		if d.Runs[i] > 0 {
			rs = append(rs, s.Runs[i]/d.Runs[i])
			pairs = append(pairs, fmt.Sprintf("%.3f", s.Runs[i]/d.Runs[i]))
		}
	}
	if len(rs) == 0 {
		return value(s) / value(d), nil
	}
	slices.Sort(rs)
	if len(rs)%2 == 1 {
		return rs[len(rs)/2], pairs
	}
	return (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2, pairs
}

// targets checks the figures the issue sets for the eBPF mode.
func targets(rep *Report) []string {
	var ebpfMode, ipt *ModeReport
	for _, mr := range rep.Modes {
		switch mr.Mode {
		case "ebpf":
			ebpfMode = mr
		case "iptables":
			ipt = mr
		}
	}
	if ebpfMode == nil {
		return nil
	}
	var out []string
	e := index(ebpfMode)
	counts := map[int]bool{}
	maxN, minN := 0, math.MaxInt
	for _, m := range ebpfMode.Results {
		counts[m.Services] = true
		maxN, minN = max(maxN, m.Services), min(minN, m.Services)
	}
	for _, n := range slices.Sorted(maps.Keys(counts)) {
		for _, c := range []struct{ svc, direct, test string }{
			{pathCIPSame, pathDirectSame, "stream"}, {pathCIPCross, pathDirectCross, "stream"}, {pathCIPCross, pathDirectCross, "crr"},
		} {
			s, ok1 := e[key{n, c.svc, c.test}]
			d, ok2 := e[key{n, c.direct, c.test}]
			if !ok1 || !ok2 || value(d) == 0 {
				continue
			}
			r, pairs := pairedRatio(s, d)
			line := fmt.Sprintf("target eBPF %s %s >= 0.95x direct at %d services: %.3fx %s", c.svc, c.test, n, r, podbench.Verdict(r >= 0.95))
			if len(pairs) > 1 {
				line += fmt.Sprintf(" (median of %d back-to-back pairs: %s)", len(pairs), strings.Join(pairs, " "))
			}
			out = append(out, line)
		}
	}
	if a, ok := e[key{minN, pathCIPCross, "crr"}]; ok && maxN != minN {
		b := e[key{maxN, pathCIPCross, "crr"}]
		r := value(b) / value(a)
		out = append(out, fmt.Sprintf("target eBPF connection rate with %d services within 5%% of %d: %.3fx %s", maxN, minN, r, podbench.Verdict(r >= 0.95)))
	}
	if ipt != nil {
		ix := index(ipt)
		behind := []string{}
		for k, m := range e {
			if k.services != maxN {
				continue
			}
			if o, ok := ix[k]; ok && value(m) <= value(o) {
				behind = append(behind, fmt.Sprintf("%s %s", k.path, k.test))
			}
		}
		out = append(out, fmt.Sprintf("target eBPF ahead of iptables on every figure at %d services: %s %v", maxN, podbench.Verdict(len(behind) == 0), behind))
	}
	if p := ebpfMode.Programming; p != nil {
		line := fmt.Sprintf("target eBPF programs %d services within 1 s of the last write: %s %s", p.Services, p.AfterLastWrite.Round(time.Millisecond), podbench.Verdict(p.AfterLastWrite <= time.Second))
		if ipt != nil && ipt.Programming != nil {
			line += fmt.Sprintf(" (iptables: %s)", ipt.Programming.AfterLastWrite.Round(time.Millisecond))
		}
		out = append(out, line)
	}
	return out
}

// writeFiles writes results.json and chart.svg under a timestamped directory of dir.
// Reprint prints the table and target checks of a results.json written by an earlier run,
// with this build's checks.
func Reprint(out io.Writer, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if len(rep.Modes) == 0 {
		return fmt.Errorf("%s: no modes measured: not a bench services results.json", file)
	}
	writeTable(out, &rep)
	return nil
}

func writeFiles(dir string, rep *Report) error {
	dir, err := perfcluster.WriteResults(dir, "services", rep.Started, rep)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "chart.svg"), []byte(chart(rep)), 0o644)
}

// chart draws one panel per figure (path and test), with a group of bars per Service
// count and a bar per mode in each group.
func chart(rep *Report) string {
	type panel struct{ path, test string }
	var panels []panel
	seen := map[panel]bool{}
	var counts []int
	seenN := map[int]bool{}
	for _, mr := range rep.Modes {
		for _, m := range mr.Results {
			p := panel{m.Path, m.Test}
			if !seen[p] {
				seen[p] = true
				panels = append(panels, p)
			}
			if !seenN[m.Services] {
				seenN[m.Services] = true
				counts = append(counts, m.Services)
			}
		}
	}
	colors := []string{"#2b8cbe", "#e34a33", "#31a354", "#756bb1"}
	const pw, ph, bar, gap = 520, 150, 22, 18
	width, height := pw+40, len(panels)*(ph+40)+60
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="10" y="18" font-size="14">capstan bench services, %s</text>`+"\n", html.EscapeString(rep.Started.Format(time.RFC3339)))
	for i, mr := range rep.Modes {
		fmt.Fprintf(&b, `<rect x="%d" y="28" width="10" height="10" fill="%s"/><text x="%d" y="37">%s</text>`+"\n", 10+i*90, colors[i%len(colors)], 24+i*90, html.EscapeString(modeLabel(mr.Mode)))
	}
	for pi, p := range panels {
		y0 := 60 + pi*(ph+40)
		unit, scale := "ops/s", 1.0
		if p.test == "stream" {
			unit, scale = "Gbit/s", 1e-9
		}
		peak := 0.0
		for _, mr := range rep.Modes {
			for _, m := range mr.Results {
				if m.Path == p.path && m.Test == p.test {
					peak = max(peak, value(m)*scale)
				}
			}
		}
		if peak == 0 {
			peak = 1
		}
		fmt.Fprintf(&b, `<text x="10" y="%d" font-size="12">%s, %s (%s)</text>`+"\n", y0+12, html.EscapeString(p.path), p.test, unit)
		base := y0 + ph
		fmt.Fprintf(&b, `<line x1="20" y1="%d" x2="%d" y2="%d" stroke="#888"/>`+"\n", base, pw, base)
		x := 30
		for _, n := range counts {
			for mi, mr := range rep.Modes {
				for _, m := range mr.Results {
					if m.Path != p.path || m.Test != p.test || m.Services != n {
						continue
					}
					v := value(m) * scale
					h := int(v / peak * float64(ph-30))
					fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`, x+mi*bar, base-h, bar-2, h, colors[mi%len(colors)])
					fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="9">%s</text>`+"\n", x+mi*bar, base-h-3, short(v))
				}
			}
			fmt.Fprintf(&b, `<text x="%d" y="%d">%d svc</text>`+"\n", x, base+14, n)
			x += len(rep.Modes)*bar + gap + 30
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func short(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v >= 10:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
