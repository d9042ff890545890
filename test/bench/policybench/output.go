package policybench

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

type key struct {
	rules      int
	path, test string
}

// figure is one rule count, path and test over every round.
type figure struct {
	key
	runs []Measurement // by operation rate
}

// median is the run the table shows: the middle one by rate (the lower of two).
func (f figure) median() Measurement { return f.runs[(len(f.runs)-1)/2] }

// figures groups the results by rule count, path and test, in the order measured.
func figures(rep *Report) []figure {
	var out []figure
	at := map[key]int{}
	for _, m := range rep.Results {
		k := key{m.Rules, m.Path, m.Test}
		i, ok := at[k]
		if !ok {
			i = len(out)
			at[k] = i
			out = append(out, figure{key: k})
		}
		out[i].runs = append(out[i].runs, m)
	}
	for _, f := range out {
		slices.SortFunc(f.runs, func(a, b Measurement) int { return cmp.Compare(a.Result.OpsPerS, b.Result.OpsPerS) })
	}
	return out
}

// writeTable prints one row per rule count, path and test (the median run when there are
// several rounds), with its operation rate as a ratio of the same path and test at the
// baseline (fewest) rule count.
func writeTable(out io.Writer, rep *Report) {
	fmt.Fprintf(out, "capstan bench policy: %s, %d rules per policy, %d round(s)\n\n", rep.RunInfo, rep.RulesPerPolicy, rep.Rounds)
	base := baseline(rep)
	figs := figures(rep)
	med := map[key]float64{}
	for _, f := range figs {
		med[f.key] = f.median().Result.OpsPerS
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "RULES\tTEST\tPATH\tOPS/S\tP50 µs\tP90 µs\tP99 µs\tCPU/100k s\tVS %d RULES\tRUNS (OPS/S)\n", base)
	for _, f := range figs {
		m := f.median()
		l := m.Result.Latency
		cpu := "-"
		if m.Result.Ops > 0 {
			// CPU seconds per 100,000 operations: client + server.
			per := 1e5 / float64(m.Result.Ops)
			cpu = fmt.Sprintf("%.1f+%.1f", m.Result.CPUS*per, m.ServerCPU*per)
		}
		ratio := "-"
		if b := med[key{base, f.path, f.test}]; b > 0 {
			ratio = fmt.Sprintf("%.3fx", m.Result.OpsPerS/b)
		}
		runs := fmt.Sprintf("%d", len(f.runs))
		if len(f.runs) > 1 {
			runs += fmt.Sprintf(" (%.0f-%.0f)", f.runs[0].Result.OpsPerS, f.runs[len(f.runs)-1].Result.OpsPerS)
		}
		row := fmt.Sprintf("%d\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s", f.rules, f.test, f.path, m.Result.OpsPerS, l.P50, l.P90, l.P99, cpu, ratio, runs)
		if m.Result.Errors > 0 {
			row += fmt.Sprintf("  (%d errors)", m.Result.Errors)
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
	fmt.Fprintln(out)
	var counts []int
	for _, l := range rep.Levels {
		if !slices.Contains(counts, l.Rules) {
			counts = append(counts, l.Rules)
		}
	}
	for _, n := range counts {
		if n == 0 {
			fmt.Fprintln(out, "0 rules: no NetworkPolicy selects the server (not isolated)")
			continue
		}
		var last Level
		var writes, enforced []time.Duration
		for _, l := range rep.Levels {
			if l.Rules == n {
				last = l
				writes, enforced = append(writes, l.Writes), append(enforced, l.Enforced)
			}
		}
		fmt.Fprintf(out, "%d rules: %d policies written in %s, %d ingress entries in the server's maps, enforced %s after the last write\n",
			n, last.Policies, span(writes), last.Entries, span(enforced))
	}
}

// span is a duration, or the range of several.
func span(ds []time.Duration) string {
	lo, hi := slices.Min(ds).Round(time.Millisecond), slices.Max(ds).Round(time.Millisecond)
	if lo == hi {
		return lo.String()
	}
	return lo.String() + "-" + hi.String()
}
