package iptables

import "context"

// jump is a rule in a built-in chain that leads into our chains. iptables-restore --noflush
// leaves built-in chains alone, so these are checked and inserted one by one.
type jump struct {
	table, chain, spec string
}

// key is the rule as iptables-save prints it after "-A ": specs are written in save's own
// order so a saved rule can be recognised as one of ours by text.
func (j jump) key() string { return j.chain + " " + j.spec }

// wantedJumps lists the jumps in the order wanted within each built-in chain. Each goes first
// in its chain, ahead of anything (a firewall's DROP, another proxy) that would otherwise see
// service traffic before us.
//
// filter: CAPSTAN-SERVICES holds ClusterIPs without endpoints, for forwarded and local
// traffic. CAPSTAN-EXTERNAL-SERVICES holds external frontends without endpoints; it is also
// reached from INPUT because NodePorts are addressed to the node, and from OUTPUT so the node
// itself is refused rather than routed to an external IP nobody serves. Only NEW connections
// are checked: established ones were allowed when they started.
func wantedJumps() []jump {
	const (
		portals = `-m comment --comment "capstan service portals" -j ` + chainServices
		newSvc  = `-m conntrack --ctstate NEW -m comment --comment "capstan service portals" -j ` + chainServices
		newExt  = `-m conntrack --ctstate NEW -m comment --comment "capstan external services" -j ` + chainExternalServices
	)
	return []jump{
		{"nat", "PREROUTING", portals},
		{"nat", "OUTPUT", portals},
		{"nat", "POSTROUTING", `-m comment --comment "capstan postrouting rules" -j ` + chainPostrouting},
		{"filter", "INPUT", newExt},
		{"filter", "FORWARD", newSvc},
		{"filter", "FORWARD", newExt},
		{"filter", "FORWARD", `-m comment --comment "capstan forwarding rules" -j ` + chainForward},
		{"filter", "OUTPUT", newSvc},
		{"filter", "OUTPUT", newExt},
	}
}

// ensureJumps inserts the wanted jumps that are missing. present, when not nil, is what an
// iptables-save of this sync found, which spares a check per jump.
func (b *Backend) ensureJumps(ctx context.Context, present map[string]bool) error {
	js := wantedJumps()
	// Inserting in reverse puts a chain's jumps in the listed order when all are missing.
	for i := len(js) - 1; i >= 0; i-- {
		j := js[i]
		if present != nil {
			if present[j.table+" "+j.key()] {
				continue
			}
		} else {
			found, err := b.cmd.check(ctx, j.table, j.chain, j.spec)
			if err != nil {
				return err
			}
			if found {
				continue
			}
		}
		if err := b.cmd.insert(ctx, j.table, j.chain, j.spec); err != nil {
			return err
		}
		b.log.Info("installed iptables jump", "table", j.table, "chain", j.chain, "to", j.spec)
	}
	return nil
}
