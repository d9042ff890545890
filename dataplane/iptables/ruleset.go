package iptables

import (
	"bytes"
	"net/netip"
	"slices"
	"strconv"

	"github.com/capstan-net/capstan/dataplane"
)

// table accumulates one table's section of an iptables-restore input. Chain declarations and
// rules go to separate buffers because a chain must be declared before any rule refers to it,
// and the per-service code only learns which chains it needs while writing rules.
type table struct {
	name     string
	declared map[string]bool
	decls    bytes.Buffer // ":CHAIN - [0:0]" lines; with --noflush each one also flushes CHAIN
	rules    bytes.Buffer // "-A ..." lines
	tail     bytes.Buffer // deletions, after every rule that could refer to what they delete
	nrules   int
}

func newTable(name string) *table {
	return &table{name: name, declared: make(map[string]bool)}
}

// chain declares a chain once; redeclaring is harmless, so callers need not track it.
func (t *table) chain(name string) {
	if t.declared[name] {
		return
	}
	t.declared[name] = true
	t.decls.WriteString(":" + name + " - [0:0]\n")
}

// rule appends "-A chain parts..." and declares chain.
func (t *table) rule(chain string, parts ...string) {
	t.chain(chain)
	t.rules.WriteString("-A ")
	t.rules.WriteString(chain)
	for _, p := range parts {
		if p == "" {
			continue
		}
		t.rules.WriteByte(' ')
		t.rules.WriteString(p)
	}
	t.rules.WriteByte('\n')
	t.nrules++
}

// deleteStale flushes and deletes the chains of ours that exist in the kernel but were not
// declared this time, and deletes built-in chain rules (jump specs) no longer wanted. Both are
// sorted so the input is the same for the same inputs.
func (t *table) deleteStale(existing map[string]bool, staleJumps []string) {
	for _, j := range staleJumps {
		t.tail.WriteString("-D " + j + "\n")
	}
	var stale []string
	for c := range existing {
		if !t.declared[c] {
			stale = append(stale, c)
		}
	}
	slices.Sort(stale)
	for _, c := range stale {
		// Declaring flushes it, so rules of other stale chains that jump here are gone
		// before any -X runs.
		t.decls.WriteString(":" + c + " - [0:0]\n")
		t.tail.WriteString("-X " + c + "\n")
	}
}

// writeTo writes the section. Its first command, listing the table (to stdout, discarded), is
// there for speed alone: iptables-nft 1.8 records every chain a restore names in a sorted
// linked list, one insertion at a time, which costs O(chains x commands): about a minute for
// 10,000 services with two endpoints each. A command that names no chain makes it fetch every
// chain at once and skip that list, bringing the same restore down to seconds. The legacy
// iptables-restore just prints the table.
func (t *table) writeTo(out *bytes.Buffer) {
	out.WriteString("*" + t.name + "\n")
	out.WriteString("-S\n")
	out.Write(t.decls.Bytes())
	out.Write(t.rules.Bytes())
	out.Write(t.tail.Bytes())
	out.WriteString("COMMIT\n")
}

// ruleset is one sync's iptables-restore input and what the backend remembers of it.
type ruleset struct {
	text []byte
	// chains are the chains of ours declared, by table: next sync's stale-chain candidates.
	chains map[string]map[string]bool
	rules  int
	// skipped are service ports left out, with why (for a log line).
	skipped []string
}

// buildInput is everything build needs; it runs no command, so tests can call it directly.
type buildInput struct {
	st          *dataplane.State
	clusterCIDR netip.Prefix // invalid: no pod range known
	serviceCIDR netip.Prefix // invalid: none
	masquerade  bool
	// existing are the chains of ours in the kernel, by table, to delete those not wanted.
	existing map[string]map[string]bool
	// staleJumps are built-in chain rules jumping to our chains that are not (or no longer)
	// among the wanted jumps, by table, in iptables-save form without "-A ".
	staleJumps map[string][]string
}

// build writes the filter and nat sections for a State.
func build(in buildInput) *ruleset {
	b := &builder{
		in:     in,
		nat:    newTable("nat"),
		filter: newTable("filter"),
	}
	b.fixedChains()
	for _, sp := range in.st.Services {
		b.service(sp)
	}
	b.nodePortEntry()

	rs := &ruleset{
		chains:  make(map[string]map[string]bool),
		rules:   b.nat.nrules + b.filter.nrules,
		skipped: b.skipped,
	}
	var out bytes.Buffer
	for _, t := range []*table{b.filter, b.nat} {
		t.deleteStale(in.existing[t.name], in.staleJumps[t.name])
		t.writeTo(&out)
		rs.chains[t.name] = t.declared
	}
	rs.text = out.Bytes()
	return rs
}

// builder writes the rules of one sync.
type builder struct {
	in          buildInput
	nat, filter *table
	skipped     []string
}

// fixedChains writes the chains every ruleset has, whatever its services.
func (b *builder) fixedChains() {
	nat, filter := b.nat, b.filter
	// Entry chains exist even when empty: the built-in chains jump to them.
	nat.chain(chainServices)
	nat.chain(chainNodePorts)
	filter.chain(chainServices)
	filter.chain(chainExternalServices)
	filter.chain(chainNodePorts)

	nat.rule(chainMarkMasq, "-j MARK --or-mark", masqMark)

	// Unmarked packets leave unchanged unless they are pod egress to masquerade. Marked ones
	// lose the mark first, so a packet encapsulated or looped back is not masqueraded twice.
	if b.podMasquerade() {
		nat.rule(chainPostrouting, "-m mark ! --mark", masqMark+"/"+masqMark, "-j", chainMasqPods)
		b.masqPods()
	}
	nat.rule(chainPostrouting, "-m mark ! --mark", masqMark+"/"+masqMark, "-j RETURN")
	nat.rule(chainPostrouting, "-j MARK --xor-mark", masqMark)
	nat.rule(chainPostrouting, "-j MASQUERADE --random-fully")

	// Service traffic DNATed to a pod must get through a FORWARD policy of DROP: a
	// connection's first packet passes when it carries the masquerade mark, the rest when they
	// belong to a known connection. Unmarked new connections (pod to pod) are left to whatever
	// else governs FORWARD, as kube-proxy leaves them.
	filter.rule(chainForward, "-m mark --mark", masqMark+"/"+masqMark, "-j ACCEPT")
	filter.rule(chainForward, "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
}

func (b *builder) podMasquerade() bool {
	return b.in.masquerade && b.in.clusterCIDR.IsValid()
}

// masqPods masquerades traffic from the pod range to anywhere outside it, as the eBPF mode
// does. Pod-to-pod traffic (including other nodes' pods, inside ClusterCIDR) keeps its source.
// The service range is excluded too, though in POSTROUTING a service address only remains as
// destination when no rule DNATed it (e.g. node-local traffic of a proxy in front of us).
func (b *builder) masqPods() {
	cc := b.in.clusterCIDR.String()
	b.nat.rule(chainMasqPods, "! -s", cc, "-j RETURN")
	b.nat.rule(chainMasqPods, "-d", cc, "-j RETURN")
	if sc := b.in.serviceCIDR; sc.IsValid() && sc.Addr().Is4() {
		b.nat.rule(chainMasqPods, "-d", sc.String(), "-j RETURN")
	}
	b.nat.rule(chainMasqPods, "-j MASQUERADE --random-fully")
}

// nodePortDests are the matches for "addressed to a NodePort of this node": the node's IPv4
// addresses from the State (where NodePorts answer, as in the eBPF mode), or, when it lists
// none, any local address but loopback, which cannot be DNATed to a pod.
func (b *builder) nodePortDests() []string {
	var out []string
	for _, a := range b.in.st.NodeAddrs {
		if a.Is4() {
			out = append(out, "-d "+hostPrefix(a))
		}
	}
	if len(out) == 0 {
		out = append(out, "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL")
	}
	return out
}

// nodePortEntry ends the service chains with the jump to the NodePort chains, so a node
// address that is also a frontend address (an external IP) is matched as that first.
func (b *builder) nodePortEntry() {
	for _, d := range b.nodePortDests() {
		b.nat.rule(chainServices, d, "-j", chainNodePorts)
		b.filter.rule(chainExternalServices, d, "-j", chainNodePorts)
	}
}

func hostPrefix(a netip.Addr) string { return a.String() + "/32" }

func netipAddrPort(t dataplane.Target) netip.AddrPort { return netip.AddrPortFrom(t.Addr, t.Port) }

func itoa(n int) string { return strconv.Itoa(n) }
