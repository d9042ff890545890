//go:build netpol

package netpol_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// netpolCase is one scenario: steps of changes, each followed by the
// reachability it must lead to. A case starts from the plain model (no
// policies, initial labels) and the suite restores that after it.
type netpolCase struct {
	name  string
	steps []step
}

type step struct {
	what    string
	actions []action
	// cols are the ports and protocols probed, usually those the step is
	// about.
	cols []column
	// want turns the all-allowed table into the expected one for col; a
	// pod reaching itself is allowed whatever it says.
	want func(r *reach, col column)
	// check, if set, runs once the table has converged.
	check func(t *testing.T, s *suite) error
	// hold, if set, runs before the actions and returns a check to run once
	// the table has converged, given when the actions were done; the time it
	// returns counts as the step's convergence too.
	hold func(t *testing.T, s *suite) (func(done time.Time) (time.Duration, error), error)
}

// expected is the table a step wants for col.
func expected(m *model, st step, col column) *reach {
	r := newReach(m.pods)
	if st.want != nil {
		st.want(r, col)
	}
	r.allowLoopback()
	return r
}

// Shorthands for the cases.
var (
	x, y, z          = inNS("x"), inNS("y"), inNS("z")
	xa, xb, xc       = pod("x", "a"), pod("x", "b"), pod("x", "c")
	ya, yb           = pod("y", "a"), pod("y", "b")
	zc               = pod("z", "c")
	tcp, udp, sctp   = corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP
	selectAll        = sel()
	podA             = sel("pod", "a")
	allowAll         = func(*reach, column) {}
	opIn, opNotIn    = metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn
	denyIngressToXA  = func(r *reach) { r.deny(anyPod, xa) }
	denyEgressFromXA = func(r *reach) { r.deny(xa, anyPod) }
)

// onlyOn is a want that allows everything on the columns keep picks, and
// denies everything to (to) or from (!to) the pods of p on the others.
func onlyOn(keep func(column) bool, to bool, p peer) func(r *reach, col column) {
	return func(r *reach, col column) {
		if keep(col) {
			return
		}
		if to {
			r.deny(anyPod, p)
		} else {
			r.deny(p, anyPod)
		}
	}
}

func is(cols ...column) func(column) bool {
	return func(c column) bool {
		for _, k := range cols {
			if k.port == c.port && k.proto == c.proto {
				return true
			}
		}
		return false
	}
}

func cases() []netpolCase {
	return []netpolCase{
		{"no policies: every pod reaches every pod", []step{{
			what: "no policies", cols: []column{tcp80, tcp81, udp80, udp81, svcTCP80, svcUDP80}, want: allowAll}}},

		// Default deny, and what it may not block.
		{"deny-all ingress in x (policyTypes Ingress); node and kubelet still reach the pods", []step{{
			what:    "deny-all ingress in x",
			actions: []action{policy("x", "deny-ingress", selectAll, ingressOnly)},
			cols:    []column{tcp80, udp80, svcTCP80},
			want:    func(r *reach, _ column) { r.deny(anyPod, x) },
			check:   nodeStillReaches("x"),
		}}},
		{"deny-all ingress with policyTypes omitted defaults to Ingress", []step{{
			what:    "policy with no rules and no policyTypes in x",
			actions: []action{policy("x", "deny", selectAll)},
			cols:    []column{tcp80, udp81},
			want:    func(r *reach, _ column) { r.deny(anyPod, x) },
		}}},
		{"deny-all egress in x", []step{{
			what:    "deny-all egress in x",
			actions: []action{policy("x", "deny-egress", selectAll, egressOnly)},
			cols:    []column{tcp80, udp80, svcTCP80},
			want:    func(r *reach, _ column) { r.deny(x, anyPod) },
		}}},
		{"deny-all ingress and egress in x", []step{{
			what:    "deny-all both ways in x",
			actions: []action{policy("x", "deny-all", selectAll, ingressAndEgress)},
			cols:    []column{tcp80, udp81},
			want:    func(r *reach, _ column) { r.deny(anyPod, x); r.deny(x, anyPod) },
			check:   nodeStillReaches("x"),
		}}},
		{"a pod no policy selects stays open", []step{{
			what:    "deny-all ingress for pod=a in x",
			actions: []action{policy("x", "deny-a", podA, ingressOnly)},
			cols:    []column{tcp80},
			want:    func(r *reach, _ column) { denyIngressToXA(r) },
		}}},
		{"allow-all ingress beside deny-all ingress: the union allows", []step{{
			what: "deny-all and allow-all ingress in x",
			actions: []action{policy("x", "deny-ingress", selectAll, ingressOnly),
				policy("x", "allow-ingress", selectAll, ingressOnly, allowFrom(nil))},
			cols: []column{tcp80, udp81},
			want: allowAll,
		}}},
		{"allow-all egress beside deny-all egress: the union allows", []step{{
			what: "deny-all and allow-all egress in x",
			actions: []action{policy("x", "deny-egress", selectAll, egressOnly),
				policy("x", "allow-egress", selectAll, egressOnly, allowTo(nil))},
			cols: []column{tcp80, udp81},
			want: allowAll,
		}}},

		// Peers.
		{"ingress podSelector {}: from the policy's own namespace", []step{{
			what:    "x/a allows from podSelector {}",
			actions: []action{policy("x", "from-x", podA, allowFrom(peers(podsWith(selectAll))))},
			cols:    []column{tcp80},
			want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(x, xa) },
		}}},
		{"ingress podSelector: from pod=b only, through the Service too", []step{{
			what:    "x/a allows from pod=b",
			actions: []action{policy("x", "from-b", podA, allowFrom(peers(podsWith(sel("pod", "b")))))},
			cols:    []column{tcp80, svcTCP80, svcUDP80},
			want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(xb, xa) },
		}}},
		{"ingress namespaceSelector: from ns=y", []step{{
			what:    "x/a allows from ns=y",
			actions: []action{policy("x", "from-y", podA, allowFrom(peers(nsWith(sel("ns", "y")))))},
			cols:    []column{tcp80, svcTCP80},
			want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(y, xa) },
		}}},
		{"ingress namespaceSelector {}: from every namespace", []step{{
			what:    "x/a allows from namespaceSelector {}",
			actions: []action{policy("x", "from-all-ns", podA, allowFrom(peers(nsWith(selectAll))))},
			cols:    []column{tcp80},
			want:    allowAll,
		}}},
		{"ingress namespaceSelector on the automatic kubernetes.io/metadata.name label", []step{{
			what:    "x/a allows from the namespace named z",
			actions: []action{policy("x", "from-z-by-name", podA, allowFrom(peers(nsNamed("z"))))},
			cols:    []column{tcp80},
			want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(z, xa) },
			check:   namespacesNamed,
		}}},
		{"ingress namespaceSelector matchExpressions NotIn", []step{{
			what:    "x/a allows from ns NotIn (x)",
			actions: []action{policy("x", "not-x", podA, allowFrom(peers(nsWith(selExpr("ns", opNotIn, "x")))))},
			cols:    []column{tcp80},
			want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(y, xa); r.allow(z, xa) },
		}}},
		{"podSelector and namespaceSelector in one peer: both must match (AND)", []step{{
			what:    "x/a allows from {ns=y, pod=b}",
			actions: []action{policy("x", "and", podA, allowFrom(peers(nsAndPods(sel("ns", "y"), sel("pod", "b")))))},
			cols:    []column{tcp80, udp80},
			want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(yb, xa) },
		}}},
		{"podSelector and namespaceSelector as two peers: either matches (OR)", []step{{
			what:    "x/a allows from {ns=y} or {pod=b}",
			actions: []action{policy("x", "or", podA, allowFrom(peers(nsWith(sel("ns", "y")), podsWith(sel("pod", "b")))))},
			cols:    []column{tcp80, udp80},
			want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(y, xa); r.allow(xb, xa) },
		}}},
		{"podSelector matchExpressions In, in every namespace", []step{{
			what:    "x/a allows from {ns: {}, pod In (b, c)}",
			actions: []action{policy("x", "b-or-c", podA, allowFrom(peers(nsAndPods(selectAll, selExpr("pod", opIn, "b", "c")))))},
			cols:    []column{tcp80},
			want: func(r *reach, _ column) {
				denyIngressToXA(r)
				r.allow(peer{name: "b"}, xa)
				r.allow(peer{name: "c"}, xa)
			},
		}}},

		// Ports and protocols.
		{"ingress on port 81 by number", []step{{
			what:    "x/a allows TCP 81 from anywhere",
			actions: []action{policy("x", "port-81", podA, allowFrom(nil, port(tcp, 81)))},
			cols:    []column{tcp80, tcp81, udp81},
			want:    onlyOn(is(tcp81), true, xa),
		}}},
		{"ingress on a named port, protocol defaulted to TCP", []step{{
			what:    "x/a allows port serve-81-tcp",
			actions: []action{policy("x", "named-81", podA, allowFrom(nil, namedPort("", "serve-81-tcp")))},
			cols:    []column{tcp80, tcp81, udp81},
			want:    onlyOn(is(tcp81), true, xa),
		}}},
		{"ingress on a named UDP port", []step{{
			what:    "x/a allows UDP port serve-81-udp from ns=y",
			actions: []action{policy("x", "named-udp", podA, allowFrom(peers(nsWith(sel("ns", "y"))), namedPort(udp, "serve-81-udp")))},
			cols:    []column{tcp81, udp80, udp81},
			want: func(r *reach, col column) {
				denyIngressToXA(r)
				if col == udp81 {
					r.allow(y, xa)
				}
			},
		}}},
		{"a named port with the wrong protocol matches nothing", []step{{
			what:    "x/a allows UDP port serve-81-tcp (no such UDP port)",
			actions: []action{policy("x", "wrong-proto", podA, allowFrom(nil, namedPort(udp, "serve-81-tcp")))},
			cols:    []column{tcp81, udp81},
			want:    func(r *reach, _ column) { denyIngressToXA(r) },
		}}},
		{"ingress on UDP 80 only: TCP 80 is denied", []step{{
			what:    "x/a allows UDP 80",
			actions: []action{policy("x", "udp-80", podA, allowFrom(nil, port(udp, 80)))},
			cols:    []column{tcp80, udp80, svcUDP80},
			want:    onlyOn(is(udp80), true, xa),
		}}},
		{"ingress SCTP 80 only: TCP 80 is denied (SCTP probed where the kernel has it)", []step{{
			what:    "x/a allows SCTP 80",
			actions: []action{policy("x", "sctp-80", podA, allowFrom(nil, port(sctp, 80)))},
			cols:    []column{tcp80, sctp80},
			want:    onlyOn(is(sctp80), true, xa),
		}}},
		{"ingress endPort range 80-81", []step{{
			what:    "x/a allows TCP 80-81",
			actions: []action{policy("x", "range", podA, allowFrom(nil, portRange(tcp, 80, 81)))},
			cols:    []column{tcp80, tcp81, udp80},
			want:    onlyOn(is(tcp80, tcp81), true, xa),
		}}},
		{"ingress endPort range 81-90 leaves 80 out", []step{{
			what:    "x/a allows TCP 81-90",
			actions: []action{policy("x", "range", podA, allowFrom(nil, portRange(tcp, 81, 90)))},
			cols:    []column{tcp80, tcp81, svcTCP81},
			want:    onlyOn(is(tcp81), true, xa),
		}}},
		{"several policies on one pod allow the union of their peers and ports", []step{{
			what: "x/a allows ns=y on TCP 80, and ns=z on TCP 81",
			actions: []action{policy("x", "y-80", podA, allowFrom(peers(nsWith(sel("ns", "y"))), port(tcp, 80))),
				policy("x", "z-81", podA, allowFrom(peers(nsWith(sel("ns", "z"))), port(tcp, 81)))},
			cols: []column{tcp80, tcp81},
			want: func(r *reach, col column) {
				denyIngressToXA(r)
				if col.port == 80 {
					r.allow(y, xa)
				} else {
					r.allow(z, xa)
				}
			},
		}}},

		// Egress.
		{"egress to one namespace only", []step{{
			what:    "x/a may reach ns=y only",
			actions: []action{policy("x", "to-y", podA, egressOnly, allowTo(peers(nsWith(sel("ns", "y")))))},
			cols:    []column{tcp80, udp80, svcTCP80},
			want:    func(r *reach, _ column) { denyEgressFromXA(r); r.allow(xa, y) },
		}}},
		{"egress to {ns=z, pod=c} in one peer", []step{{
			what:    "x/a may reach z/c only",
			actions: []action{policy("x", "to-zc", podA, egressOnly, allowTo(peers(nsAndPods(sel("ns", "z"), sel("pod", "c")))))},
			cols:    []column{tcp80, udp81},
			want:    func(r *reach, _ column) { denyEgressFromXA(r); r.allow(xa, zc) },
		}}},
		{"egress on TCP 80 only", []step{{
			what:    "x/a may use TCP 80 only",
			actions: []action{policy("x", "tcp-80", podA, egressOnly, allowTo(nil, port(tcp, 80)))},
			cols:    []column{tcp80, tcp81, udp80},
			want:    onlyOn(is(tcp80), false, xa),
		}}},
		{"egress on named ports, resolved against the destination pod", []step{{
			what: "x/a may use serve-81-tcp and serve-80-udp",
			actions: []action{policy("x", "named", podA, egressOnly,
				allowTo(nil, namedPort(tcp, "serve-81-tcp"), namedPort(udp, "serve-80-udp")))},
			cols: []column{tcp80, tcp81, udp80, udp81, svcTCP81},
			want: onlyOn(is(tcp81, udp80), false, xa),
		}}},
		{"egress rules with policyTypes omitted: Ingress and Egress", []step{{
			what:    "x/a: egress to ns=y, no policyTypes",
			actions: []action{policy("x", "implied", podA, allowTo(peers(nsWith(sel("ns", "y")))))},
			cols:    []column{tcp80},
			want:    func(r *reach, _ column) { denyIngressToXA(r); denyEgressFromXA(r); r.allow(xa, y) },
		}}},

		// ipBlock.
		{"ingress ipBlock: the pod CIDR except one pod's /32", []step{{
			what:    "x/a allows from the pod CIDR except y/b",
			actions: []action{policy("x", "cidr", podA, allowFrom(peers(ipBlock(podCIDR, podIP32("y", "b")))))},
			cols:    []column{tcp80, udp80},
			want:    func(r *reach, _ column) { r.deny(yb, xa) },
		}}},
		{"egress ipBlock: one pod's /32, through its Service too", []step{{
			what:    "x/a may reach y/b's IP only",
			actions: []action{policy("x", "to-yb", podA, egressOnly, allowTo(peers(ipBlock(podIP32("y", "b")))))},
			cols:    []column{tcp80, svcTCP80, svcUDP80},
			want:    func(r *reach, _ column) { denyEgressFromXA(r); r.allow(xa, yb) },
		}}},
		{"egress ipBlock: the pod CIDR except two pods", []step{{
			what:    "x/a may reach the pod CIDR except x/b and z/c",
			actions: []action{policy("x", "cidr-except", podA, egressOnly, allowTo(peers(ipBlock(podCIDR, podIP32("x", "b"), podIP32("z", "c")))))},
			cols:    []column{tcp80, udp81},
			want:    func(r *reach, _ column) { r.deny(xa, xb); r.deny(xa, zc) },
		}}},

		// Connections are stateful.
		{"replies of allowed connections pass deny-all egress (server) and deny-all ingress (client)", []step{{
			what: "y/b denies all egress, x/a all ingress",
			actions: []action{policy("y", "b-no-egress", sel("pod", "b"), egressOnly),
				policy("x", "a-no-ingress", podA, ingressOnly)},
			cols: []column{tcp80, udp80, svcTCP80},
			want: func(r *reach, _ column) { r.deny(yb, anyPod); denyIngressToXA(r) },
		}}},
		{"a new deny policy cuts an established connection", []step{{
			what:    "y/b denies all ingress under a persistent connection from x/a",
			hold:    holdConnection(podID{"x", "a"}, podID{"y", "b"}),
			actions: []action{policy("y", "b-no-ingress", sel("pod", "b"), ingressOnly)},
			cols:    []column{tcp80},
			want:    func(r *reach, _ column) { r.deny(anyPod, yb) },
		}}},

		// Changes.
		{"policy updated in place", []step{
			{what: "x/a allows from pod=b", cols: []column{tcp80},
				actions: []action{policy("x", "from-one", podA, allowFrom(peers(podsWith(sel("pod", "b")))))},
				want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(xb, xa) }},
			{what: "the same policy now allows from pod=c", cols: []column{tcp80},
				actions: []action{policy("x", "from-one", podA, allowFrom(peers(podsWith(sel("pod", "c")))))},
				want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(xc, xa) }},
			{what: "and from ns=z on UDP 81 too", cols: []column{tcp80, udp81},
				actions: []action{policy("x", "from-one", podA, allowFrom(peers(podsWith(sel("pod", "c")))),
					allowFrom(peers(nsWith(sel("ns", "z"))), port(udp, 81)))},
				want: func(r *reach, col column) {
					denyIngressToXA(r)
					r.allow(xc, xa)
					if col == udp81 {
						r.allow(z, xa)
					}
				}},
		}},
		{"policy deleted", []step{
			{what: "deny-all ingress in x", cols: []column{tcp80},
				actions: []action{policy("x", "deny-ingress", selectAll, ingressOnly)},
				want:    func(r *reach, _ column) { r.deny(anyPod, x) }},
			{what: "policy deleted", cols: []column{tcp80},
				actions: []action{deletePolicy{"x", "deny-ingress"}}, want: allowAll},
		}},
		{"pod relabelled: a client gains and loses the allowed label", []step{
			{what: "x/a allows from role=client in any namespace", cols: []column{tcp80},
				actions: []action{policy("x", "clients", podA, allowFrom(peers(nsAndPods(selectAll, sel("role", "client")))))},
				want:    func(r *reach, _ column) { denyIngressToXA(r) }},
			{what: "y/b labelled role=client", cols: []column{tcp80},
				actions: []action{labelPod{podID{"y", "b"}, "role", "client"}},
				want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(yb, xa) }},
			{what: "label removed again", cols: []column{tcp80},
				actions: []action{labelPod{podID{"y", "b"}, "role", ""}},
				want:    func(r *reach, _ column) { denyIngressToXA(r) }},
		}},
		{"pod relabelled: a pod becomes and stops being selected", []step{
			{what: "deny-all ingress for target=yes in x", cols: []column{tcp80},
				actions: []action{policy("x", "targets", sel("target", "yes"), ingressOnly)}, want: allowAll},
			{what: "x/c labelled target=yes", cols: []column{tcp80},
				actions: []action{labelPod{podID{"x", "c"}, "target", "yes"}},
				want:    func(r *reach, _ column) { r.deny(anyPod, xc) }},
			{what: "label removed again", cols: []column{tcp80},
				actions: []action{labelPod{podID{"x", "c"}, "target", ""}}, want: allowAll},
		}},
		{"namespace relabelled", []step{
			{what: "x/a allows from team=blue namespaces", cols: []column{tcp80},
				actions: []action{policy("x", "blue", podA, allowFrom(peers(nsWith(sel("team", "blue")))))},
				want:    func(r *reach, _ column) { denyIngressToXA(r) }},
			{what: "z labelled team=blue", cols: []column{tcp80},
				actions: []action{labelNS{"z", "team", "blue"}},
				want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(z, xa) }},
			{what: "the label moves from z to y", cols: []column{tcp80},
				actions: []action{labelNS{"y", "team", "blue"}, labelNS{"z", "team", ""}},
				want:    func(r *reach, _ column) { denyIngressToXA(r); r.allow(y, xa) }},
		}},
		{"default deny ingress, then allow from ns=y on TCP 80", []step{
			{what: "deny-all ingress in x", cols: []column{tcp80, tcp81},
				actions: []action{policy("x", "deny-ingress", selectAll, ingressOnly)},
				want:    func(r *reach, _ column) { r.deny(anyPod, x) }},
			{what: "x allows ns=y on TCP 80", cols: []column{tcp80, tcp81},
				actions: []action{policy("x", "allow-y-80", selectAll, allowFrom(peers(nsWith(sel("ns", "y"))), port(tcp, 80)))},
				want: func(r *reach, col column) {
					r.deny(anyPod, x)
					if col == tcp80 {
						r.allow(y, x)
					}
				}},
		}},
		{"default deny egress, then allow egress to ns=z", []step{
			{what: "deny-all egress in x", cols: []column{tcp80, udp80},
				actions: []action{policy("x", "deny-egress", selectAll, egressOnly)},
				want:    func(r *reach, _ column) { r.deny(x, anyPod) }},
			{what: "x may reach ns=z", cols: []column{tcp80, udp80},
				actions: []action{policy("x", "allow-z", selectAll, egressOnly, allowTo(peers(nsWith(sel("ns", "z")))))},
				want:    func(r *reach, _ column) { r.deny(x, anyPod); r.allow(x, z) }},
		}},
		{"both ends isolated: egress from x and ingress to y must both allow", []step{
			{what: "deny-all egress in x, deny-all ingress in y", cols: []column{tcp80},
				actions: []action{policy("x", "deny-egress", selectAll, egressOnly), policy("y", "deny-ingress", selectAll, ingressOnly)},
				want:    func(r *reach, _ column) { r.deny(x, anyPod); r.deny(anyPod, y) }},
			{what: "x may reach ns=y (egress side only)", cols: []column{tcp80},
				actions: []action{policy("x", "to-y", selectAll, egressOnly, allowTo(peers(nsWith(sel("ns", "y")))))},
				want:    func(r *reach, _ column) { r.deny(x, anyPod); r.deny(anyPod, y) }},
			{what: "y allows from ns=x (both sides now)", cols: []column{tcp80, svcTCP80},
				actions: []action{policy("y", "from-x", selectAll, ingressOnly, allowFrom(peers(nsWith(sel("ns", "x")))))},
				want:    func(r *reach, _ column) { r.deny(x, anyPod); r.deny(anyPod, y); r.allow(x, y) }},
		}},
		{"egress deny-all in one namespace leaves the others alone", []step{{
			what:    "deny-all egress for pod=a in y and z",
			actions: []action{policy("y", "deny-a", podA, egressOnly), policy("z", "deny-a", podA, egressOnly)},
			cols:    []column{tcp80},
			want:    func(r *reach, _ column) { r.deny(ya, anyPod); r.deny(pod("z", "a"), anyPod) },
		}}},
	}
}
