package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/capstan-net/capstan/dataplane"
)

// service writes the rules of one service port:
//
//	nat CAPSTAN-SERVICES:  ClusterIP:port -> SVC;  external/LB IP:port -> EXT
//	nat CAPSTAN-NODEPORTS: nodePort -> EXT
//	SVC: mark non-pod sources for masquerade, then pick a SEP among the ClusterIP targets
//	EXT: decide masquerading and whether SVC or XLB (the external targets) serves the packet
//	SEP: mark hairpin traffic for masquerade, DNAT to the endpoint
//	filter: REJECT (no endpoints at all) or DROP (none for this kind of frontend) new
//	        connections to frontends that have no usable target
//
// Only IPv4 is programmed (iptables is IPv4; as in the eBPF mode, IPv6 is left out).
func (b *builder) service(sp *dataplane.ServicePort) {
	proto, ok := protocolName(sp.Protocol)
	if !ok {
		b.skipped = append(b.skipped, fmt.Sprintf("%s: protocol %q", sp.Name, sp.Protocol))
		return
	}
	if sp.Port == 0 {
		b.skipped = append(b.skipped, fmt.Sprintf("%s: port 0", sp.Name))
		return
	}
	clusterIPs := ipv4(sp.ClusterIPs)
	extIPs := append(ipv4(sp.ExternalIPs), ipv4(sp.LoadBalancerIPs)...)
	if len(clusterIPs) == 0 && len(extIPs) == 0 && sp.NodePort == 0 {
		b.skipped = append(b.skipped, fmt.Sprintf("%s: no IPv4 frontend", sp.Name))
		return
	}
	hasExternal := sp.NodePort != 0 || len(extIPs) > 0
	cluster := usableIPv4(sp.ClusterTargets)
	external := usableIPv4(sp.ExternalTargets)
	// With both policies Local and no local endpoint there is nothing anywhere to reach, as
	// far as this node is concerned, which kube-proxy also reports as "no endpoints".
	hasEndpoints := len(cluster) > 0 || len(external) > 0

	name := sp.Name.String()
	ch := chainsFor(sp.Name)
	dport := portMatch(proto, sp.Port)

	// Endpoint chains, shared by SVC and XLB.
	seps := make(map[netip.AddrPort]string)
	for _, t := range slices.Concat(cluster, external) {
		ap := netipAddrPort(t)
		if _, ok := seps[ap]; ok {
			continue
		}
		seps[ap] = sepChain(sp.Name, t)
		b.endpoint(sp, seps[ap], t, proto)
	}

	svc := ""
	if len(cluster) > 0 {
		svc = ch.svc
		if cc := b.in.clusterCIDR; cc.IsValid() {
			// Traffic from outside the pod range (the node itself, other hosts) must come
			// back through this node, so it is masqueraded; pods keep their address. The
			// -d guard leaves external frontends, which jump here from EXT, to EXT.
			for _, ip := range clusterIPs {
				b.nat.rule(svc, "! -s", cc.String(), "-d", hostPrefix(ip), dport, "-j", chainMarkMasq)
			}
		}
		b.balance(svc, sp, cluster, seps)
	}

	// Which chain picks the endpoint for external frontends: SVC when the targets are the
	// same (the usual case, no duplicate rules), else XLB over the external targets.
	extPolicy := ""
	if hasExternal && len(external) > 0 {
		if sameTargets(cluster, external) {
			extPolicy = svc
		} else {
			extPolicy = ch.xlb
			b.balance(ch.xlb, sp, external, seps)
		}
	}

	ext := ""
	if hasExternal {
		ext = b.externalEntry(sp, ch.ext, svc, extPolicy)
	}

	// The frontends.
	for _, ip := range clusterIPs {
		if svc != "" {
			b.nat.rule(chainServices, "-d", hostPrefix(ip), dport, comment(name, "cluster IP"), "-j", svc)
		} else {
			b.filter.rule(chainServices, "-d", hostPrefix(ip), dport, comment(name, noEndpoints(hasEndpoints)),
				rejectOrDrop(hasEndpoints))
		}
	}
	if ext != "" {
		for _, ip := range ipv4(sp.ExternalIPs) {
			b.nat.rule(chainServices, "-d", hostPrefix(ip), dport, comment(name, "external IP"), "-j", ext)
		}
		for _, ip := range ipv4(sp.LoadBalancerIPs) {
			b.nat.rule(chainServices, "-d", hostPrefix(ip), dport, comment(name, "load-balancer IP"), "-j", ext)
		}
	}
	if sp.NodePort != 0 && ext != "" {
		b.nat.rule(chainNodePorts, portMatch(proto, sp.NodePort), comment(name, "node port"), "-j", ext)
	}
	// External frontends with no usable external target. With the Local policy EXT may
	// still exist (pods and the node itself use the cluster targets), so the packets that
	// fall through it unchanged are the ones this drops.
	if hasExternal && len(external) == 0 {
		verdict := rejectOrDrop(hasEndpoints)
		why := comment(name, noEndpoints(hasEndpoints))
		for _, ip := range extIPs {
			b.filter.rule(chainExternalServices, "-d", hostPrefix(ip), dport, why, verdict)
		}
		if sp.NodePort != 0 {
			b.filter.rule(chainNodePorts, portMatch(proto, sp.NodePort), why, verdict)
		}
	}
}

// externalEntry writes the EXT chain of a service port and returns its name, or "" when it
// would be empty (then the external frontends get no nat rule at all).
//
// Cluster policy: everything is masqueraded (the reply must come back through this node to be
// un-DNATed) and served by extPolicy. Local policy keeps the client address and uses local
// endpoints only, except for traffic that starts inside the cluster: from a pod it goes to the
// cluster targets unmasqueraded, as if the pod had used the ClusterIP; from the node itself it
// is masqueraded too, since its source may be an address the endpoint cannot answer.
func (b *builder) externalEntry(sp *dataplane.ServicePort, ext, svc, extPolicy string) string {
	if sp.ExternalPolicyLocal {
		if svc != "" {
			if cc := b.in.clusterCIDR; cc.IsValid() {
				b.nat.rule(ext, "-s", cc.String(), "-j", svc)
			}
			b.nat.rule(ext, "-m addrtype --src-type LOCAL -j", chainMarkMasq)
			b.nat.rule(ext, "-m addrtype --src-type LOCAL -j", svc)
		}
		if extPolicy != "" {
			b.nat.rule(ext, "-j", extPolicy)
		}
	} else if extPolicy != "" {
		b.nat.rule(ext, "-j", chainMarkMasq)
		b.nat.rule(ext, "-j", extPolicy)
	}
	if !b.nat.declared[ext] {
		return ""
	}
	return ext
}

// balance writes a chain that sends a new connection to one of targets: to the one it went to
// last (session affinity, while the client's entry in that endpoint's recent list is fresh),
// else to each with equal chance. Rule i matches with probability 1/(n-i) of what reaches it,
// which makes every endpoint's overall chance 1/n; the last rule takes what is left.
func (b *builder) balance(chain string, sp *dataplane.ServicePort, targets []dataplane.Target, seps map[netip.AddrPort]string) {
	b.nat.chain(chain)
	if secs := affinitySeconds(sp); secs > 0 {
		for _, t := range targets {
			sep := seps[netipAddrPort(t)]
			b.nat.rule(chain, "-m recent --name", sep, "--mask 255.255.255.255 --rsource --rcheck --seconds",
				itoa(secs), "--reap -j", sep)
		}
	}
	n := len(targets)
	for i, t := range targets {
		sep := seps[netipAddrPort(t)]
		if i < n-1 {
			b.nat.rule(chain, "-m statistic --mode random --probability", probability(n-i), "-j", sep)
		} else {
			b.nat.rule(chain, "-j", sep)
		}
	}
}

// endpoint writes one SEP chain. A pod reaching itself through the service would otherwise get
// the reply straight from its own stack, with the wrong source: hairpin traffic is masqueraded.
// With session affinity the client is recorded in the endpoint's recent list here, where the
// choice is final.
func (b *builder) endpoint(sp *dataplane.ServicePort, sep string, t dataplane.Target, proto string) {
	b.nat.rule(sep, "-s", hostPrefix(t.Addr), "-j", chainMarkMasq)
	recent := ""
	if affinitySeconds(sp) > 0 {
		recent = "-m recent --name " + sep + " --set --mask 255.255.255.255 --rsource"
	}
	b.nat.rule(sep, "-p", proto, recent, "-j DNAT --to-destination", netipAddrPort(t).String())
}

// probability formats 1/n the way iptables reads it back (it keeps about nine digits).
func probability(n int) string {
	return fmt.Sprintf("%0.10f", 1/float64(n))
}

func affinitySeconds(sp *dataplane.ServicePort) int {
	if sp.AffinityTimeout <= 0 {
		return 0
	}
	return max(1, int(sp.AffinityTimeout.Seconds()))
}

func protocolName(p v1.Protocol) (string, bool) {
	switch p {
	case v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP:
		return strings.ToLower(string(p)), true
	}
	return "", false
}

func portMatch(proto string, port uint16) string {
	return "-p " + proto + " -m " + proto + " --dport " + itoa(int(port))
}

// comment labels a frontend rule with its service, for whoever reads iptables-save. Service
// and port names cannot hold quotes; the replacement only keeps a bad input from breaking the
// whole restore.
func comment(name, what string) string {
	s := strings.NewReplacer(`"`, "'", `\`, "/").Replace(name + " " + what)
	return `-m comment --comment "` + s + `"`
}

func noEndpoints(hasEndpoints bool) string {
	if hasEndpoints {
		return "has no local endpoints"
	}
	return "has no endpoints"
}

// rejectOrDrop is the verdict for new connections to a frontend without usable targets: a
// service with no endpoints refuses at once (a port-unreachable makes TCP connect fail with
// ECONNREFUSED), one with endpoints only elsewhere drops, as kube-proxy does, so an external
// load balancer's retries and health checks move to another node.
func rejectOrDrop(hasEndpoints bool) string {
	if hasEndpoints {
		return "-j DROP"
	}
	return "-j REJECT --reject-with icmp-port-unreachable"
}

func ipv4(addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			out = append(out, a)
		}
	}
	return out
}

// usableIPv4 are the targets that take new connections. Terminating ones are left out: the
// connections they still serve live in conntrack and need no rule. Port 0 cannot be DNATed to.
func usableIPv4(ts []dataplane.Target) []dataplane.Target {
	var out []dataplane.Target
	for _, t := range ts {
		if t.Usable && t.Addr.Is4() && t.Port != 0 {
			out = append(out, t)
		}
	}
	return out
}

func sameTargets(a, b []dataplane.Target) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if netipAddrPort(a[i]) != netipAddrPort(b[i]) {
			return false
		}
	}
	return true
}
