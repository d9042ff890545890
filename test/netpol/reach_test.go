//go:build netpol

package netpol_test

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// column is one kind of probe: a port and protocol, to the destination
// pod's IP or to its Service's ClusterIP (the policy must hold after the
// Service's translation).
type column struct {
	port  int32
	proto corev1.Protocol
	svc   bool
}

func (c column) String() string {
	s := fmt.Sprintf("%d/%s", c.port, c.proto)
	if c.svc {
		s += " via Service"
	}
	return s
}

var (
	tcp80    = column{80, corev1.ProtocolTCP, false}
	tcp81    = column{81, corev1.ProtocolTCP, false}
	udp80    = column{80, corev1.ProtocolUDP, false}
	udp81    = column{81, corev1.ProtocolUDP, false}
	sctp80   = column{80, corev1.ProtocolSCTP, false}
	svcTCP80 = column{80, corev1.ProtocolTCP, true}
	svcTCP81 = column{81, corev1.ProtocolTCP, true}
	svcUDP80 = column{80, corev1.ProtocolUDP, true}
)

// peer matches model pods: an empty field matches any namespace or pod name.
type peer struct{ ns, name string }

var anyPod = peer{}

func inNS(ns string) peer      { return peer{ns: ns} }
func pod(ns, name string) peer { return peer{ns, name} }
func (p peer) matches(id podID) bool {
	return (p.ns == "" || p.ns == id.ns) && (p.name == "" || p.name == id.name)
}

// reach is a truth table over the model's pods: rows are clients, columns
// servers.
type reach struct {
	pods []podID
	ok   [][]bool
}

// newReach is a table with every pair allowed.
func newReach(pods []podID) *reach {
	r := &reach{pods: pods, ok: make([][]bool, len(pods))}
	for i := range r.ok {
		r.ok[i] = make([]bool, len(pods))
		for j := range r.ok[i] {
			r.ok[i][j] = true
		}
	}
	return r
}

// set sets every pair from a pod matching from to a pod matching to.
func (r *reach) set(from, to peer, allowed bool) {
	for i, f := range r.pods {
		for j, t := range r.pods {
			if from.matches(f) && to.matches(t) {
				r.ok[i][j] = allowed
			}
		}
	}
}

func (r *reach) deny(from, to peer)  { r.set(from, to, false) }
func (r *reach) allow(from, to peer) { r.set(from, to, true) }

// allowLoopback allows every pod to reach itself: that traffic never leaves
// the pod, and no policy applies to it.
func (r *reach) allowLoopback() {
	for i := range r.pods {
		r.ok[i][i] = true
	}
}

// observed is what one probe round found for one column: allowed or not,
// or unknown ('?': the exec failed, or the wrong pod answered), and what
// the probe printed.
type observed struct {
	pods   []podID
	cell   [][]byte // '.', 'X' or '?'
	detail [][]string
}

func newObserved(pods []podID) *observed {
	o := &observed{pods: pods, cell: make([][]byte, len(pods)), detail: make([][]string, len(pods))}
	for i := range pods {
		o.cell[i] = []byte(strings.Repeat(" ", len(pods)))
		o.detail[i] = make([]string, len(pods))
	}
	return o
}

func mark(allowed bool) byte {
	if allowed {
		return '.'
	}
	return 'X'
}

// grid prints a table upstream's way: a row per client, a column per
// server, . for allowed and X for denied.
func grid(pods []podID, cell func(i, j int) byte) string {
	var b strings.Builder
	line := func(head string, cells []string) {
		fmt.Fprintf(&b, "%-6s%s\n", head, strings.TrimRight(strings.Join(cells, ""), " "))
	}
	var head []string
	for _, p := range pods {
		head = append(head, fmt.Sprintf("%-5s", p))
	}
	line("-", head)
	for i, p := range pods {
		var row []string
		for j := range pods {
			row = append(row, fmt.Sprintf("%-5c", cell(i, j)))
		}
		line(p.String(), row)
	}
	return b.String()
}

func (r *reach) String() string {
	return grid(r.pods, func(i, j int) byte { return mark(r.ok[i][j]) })
}

// mismatches lists the pairs where o differs from r.
func (o *observed) mismatches(r *reach) [][2]int {
	var out [][2]int
	for i := range o.pods {
		for j := range o.pods {
			if o.cell[i][j] != mark(r.ok[i][j]) {
				out = append(out, [2]int{i, j})
			}
		}
	}
	return out
}

// report prints the expected and observed tables of one column, which
// pairs differ, and what their probes said.
func (o *observed) report(col column, want *reach) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s expected (rows: from, columns: to; . allowed, X denied):\n%s", col, want)
	fmt.Fprintf(&b, "%s observed (? = no answer from the exec, or the wrong pod answered):\n%s", col,
		grid(o.pods, func(i, j int) byte { return o.cell[i][j] }))
	fmt.Fprintf(&b, "%s comparison (X = differs):\n%s", col, grid(o.pods, func(i, j int) byte {
		return mark(o.cell[i][j] == mark(want.ok[i][j]))
	}))
	for _, m := range o.mismatches(want) {
		i, j := m[0], m[1]
		fmt.Fprintf(&b, "  %s -> %s: expected %s, probe said %q\n", o.pods[i], o.pods[j],
			map[bool]string{true: "allowed", false: "denied"}[want.ok[i][j]], o.detail[i][j])
	}
	return b.String()
}
