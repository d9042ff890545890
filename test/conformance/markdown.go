package conformance

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
)

// modeRank orders the table's modes: eBPF first, then the two it is
// compared with.
func modeRank(mode string) int {
	switch mode {
	case "ebpf":
		return 0
	case "iptables":
		return 1
	}
	return 2
}

// Explanation says why specs matching Pattern do not pass here, in words a
// reader can check; it replaces the bare failure message in the table.
type Explanation struct {
	Pattern *regexp.Regexp
	Text    string
}

// ParseExplanations reads lines of "regexp<TAB>explanation"; blank lines and
// lines starting with # are ignored.
func ParseExplanations(text string) ([]Explanation, error) {
	var out []Explanation
	for i, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pat, expl, ok := strings.Cut(line, "\t")
		if !ok || strings.TrimSpace(expl) == "" {
			return nil, fmt.Errorf("explanations line %d: want <regexp><TAB><explanation>", i+1)
		}
		re, err := regexp.Compile(pat)
		if err != nil {
			return nil, fmt.Errorf("explanations line %d: %w", i+1, err)
		}
		out = append(out, Explanation{Pattern: re, Text: strings.TrimSpace(expl)})
	}
	return out, nil
}

func explain(ex []Explanation, s Spec) string {
	for _, e := range ex {
		if e.Pattern.MatchString(s.Name) {
			return e.Text
		}
	}
	return s.Reason
}

// WriteMarkdown renders the records: a summary row per suite and mode, then
// per suite every spec not passed in some mode, with its state in each mode
// and one line of reason.
func WriteMarkdown(w io.Writer, recs []*Record, ex []Explanation) {
	fmt.Fprint(w, "# Kubernetes conformance\n\n")
	fmt.Fprint(w, "The upstream end-to-end suite (`e2e.test`, built by `tools/e2e`) run against fresh `capstan up`\n"+
		"clusters by `make conformance` (`[Conformance]`, eBPF mode) and `make sig-network` (every\n"+
		"`[sig-network]` spec, in each service mode). Generated from `docs/conformance/*.json`; the\n"+
		"explanations come from `docs/conformance/explanations.tsv`.\n\n")
	fmt.Fprint(w, "| suite | mode | passed | failed | skipped | pass rate | took | commit | date |\n|---|---|---|---|---|---|---|---|---|\n")
	sortRecords(recs)
	for _, r := range recs {
		rate := "-"
		if ran := r.Passed + r.Failed; ran > 0 {
			rate = fmt.Sprintf("%.1f %%", 100*float64(r.Passed)/float64(ran))
		}
		fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %s | %s | %s | %s |\n", r.Suite, r.Mode, r.Passed, r.Failed, r.Skipped,
			rate, r.Took, r.Capstan, r.Date.Format("2006-01-02"))
	}
	if len(recs) > 0 {
		fmt.Fprintf(w, "\nKubernetes %s; machine: %s.\n", recs[0].Kubernetes, recs[0].Machine)
	}
	for _, suite := range suites(recs) {
		writeNotPassed(w, suite, recs, ex)
	}
}

func writeNotPassed(w io.Writer, suite string, recs []*Record, ex []Explanation) {
	var modes []string
	states := map[string]map[string]Spec{} // spec name -> mode -> spec
	for _, r := range recs {
		if r.Suite != suite {
			continue
		}
		modes = append(modes, r.Mode)
		for _, s := range r.NotPassed {
			if states[s.Name] == nil {
				states[s.Name] = map[string]Spec{}
			}
			states[s.Name][r.Mode] = s
		}
	}
	fmt.Fprintf(w, "\n## %s: specs not passed\n\n", suite)
	if len(states) == 0 {
		fmt.Fprint(w, "None.\n")
		return
	}
	fmt.Fprintf(w, "| spec | %s | reason |\n|---|%s---|\n", strings.Join(modes, " | "), strings.Repeat("---|", len(modes)))
	names := make([]string, 0, len(states))
	for n := range states {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		var cells []string
		var first Spec
		for _, m := range modes {
			s, ok := states[n][m]
			if !ok {
				cells = append(cells, Passed)
				continue
			}
			if first.Name == "" {
				first = s
			}
			cells = append(cells, s.State)
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", cell(n), strings.Join(cells, " | "), cell(explain(ex, first)))
	}
}

// cell keeps a table cell on one line and its pipes literal.
func cell(s string) string {
	return strings.ReplaceAll(strings.Join(strings.Fields(s), " "), "|", `\|`)
}

func suites(recs []*Record) []string {
	var out []string
	for _, r := range recs {
		if !slices.Contains(out, r.Suite) {
			out = append(out, r.Suite)
		}
	}
	return out
}

func sortRecords(recs []*Record) {
	slices.SortStableFunc(recs, func(a, b *Record) int {
		if c := strings.Compare(a.Suite, b.Suite); c != 0 {
			return c
		}
		return modeRank(a.Mode) - modeRank(b.Mode)
	})
}
