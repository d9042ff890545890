package iptables

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"
)

// kernelTable is what iptables-save shows of ours in one table.
type kernelTable struct {
	// chains of ours.
	chains map[string]bool
	// jumps are rules of other chains (the built-in ones) that jump or go to ours, as
	// iptables-save prints them after "-A ".
	jumps []string
}

// parseSave reads one table's iptables-save output.
func parseSave(out []byte) kernelTable {
	kt := kernelTable{chains: make(map[string]bool)}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if ours(name) {
				kt.chains[name] = true
			}
		case strings.HasPrefix(line, "-A "):
			rule := line[len("-A "):]
			chain, _, _ := strings.Cut(rule, " ")
			if !ours(chain) && (strings.Contains(rule, " -j "+chainPrefix) || strings.Contains(rule, " -g "+chainPrefix)) {
				kt.jumps = append(kt.jumps, rule)
			}
		}
	}
	return kt
}

// readKernel dumps the filter and nat tables and returns their parsed form, by table.
func readKernel(ctx context.Context, cmd commands) (map[string]kernelTable, error) {
	out := make(map[string]kernelTable, 2)
	for _, t := range []string{"filter", "nat"} {
		dump, err := cmd.saveTable(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("list %s table: %w", t, err)
		}
		out[t] = parseSave(dump)
	}
	return out, nil
}
