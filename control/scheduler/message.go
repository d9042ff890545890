package scheduler

import (
	"fmt"
	"sort"
	"strings"
)

// unschedulableMessage words a failure as upstream's FitError does:
// "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) were unschedulable."
// with reasons counted over nodes and sorted as strings.
func unschedulableMessage(totalNodes int, reasons map[string]int) string {
	if totalNodes == 0 {
		return "no nodes available to schedule pods"
	}
	parts := make([]string, 0, len(reasons))
	for r, n := range reasons {
		parts = append(parts, fmt.Sprintf("%d %s", n, r))
	}
	sort.Strings(parts)
	msg := fmt.Sprintf("0/%d nodes are available:", totalNodes)
	if len(parts) > 0 {
		msg += " " + strings.Join(parts, ", ") + "."
	}
	return msg
}
