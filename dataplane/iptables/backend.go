// Package iptables is a dataplane Backend that programs Services the way kube-proxy's iptables
// mode does (DNAT chains chosen with the statistic match, marks for masquerading), for
// benchmarking against the eBPF backend on the same State. Its chains are named CAPSTAN-* so
// a real kube-proxy (KUBE-*) can run beside it. Only IPv4 is programmed.
//
// Every Sync writes the whole ruleset in one iptables-restore --noflush: it redeclares (and so
// flushes) every chain it wants, fills them, and deletes the chains of ours it no longer wants.
package iptables

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/capstan-net/capstan/dataplane"
)

// Config configures a Backend.
type Config struct {
	// Netns is the path of the network namespace to program (e.g. /run/netns/x); empty is
	// the caller's.
	Netns string
	// ClusterCIDR is the pod range (IPv4). Traffic to a ClusterIP from outside it is
	// masqueraded, as kube-proxy does with --cluster-cidr. Invalid (zero) means unknown: no
	// such rule, and no Masquerade.
	ClusterCIDR netip.Prefix
	// ServiceCIDR, optional, is never masqueraded by Masquerade.
	ServiceCIDR netip.Prefix
	// Masquerade SNATs pod traffic leaving ClusterCIDR (and not to ServiceCIDR) to the node
	// address, as the eBPF mode does. It needs ClusterCIDR.
	Masquerade bool
	Logger     *slog.Logger

	// The binaries; empty means "iptables-restore", "iptables-save", "iptables" and
	// "nsenter" from PATH.
	IptablesRestore, IptablesSave, Iptables, Nsenter string
}

func (c Config) validate() error {
	for _, p := range []struct {
		name string
		p    netip.Prefix
	}{{"cluster CIDR", c.ClusterCIDR}, {"service CIDR", c.ServiceCIDR}} {
		if p.p.IsValid() && !p.p.Addr().Is4() {
			return fmt.Errorf("%s %s is not IPv4", p.name, p.p)
		}
	}
	return nil
}

// Stats describe the ruleset of the last successful Sync.
type Stats struct {
	Chains int // chains of ours, filter and nat together
	Rules  int // rules in them
	Bytes  int // size of the iptables-restore input
	// Skipped are service ports not programmed (not IPv4, unknown protocol).
	Skipped int
	// Duration is how long the Sync took, commands included.
	Duration time.Duration
}

// Backend programs a State into iptables. It is safe for concurrent use; syncs are serialised.
type Backend struct {
	cfg Config
	cmd commands
	log *slog.Logger

	mu sync.Mutex
	// existing are our chains in the kernel, by table, as left by the last successful sync;
	// nil means unknown (first sync, or the last one failed): the next sync reads them.
	existing map[string]map[string]bool
	stats    Stats
}

var _ dataplane.Backend = (*Backend)(nil)

// New returns a Backend. It runs no command: the first Sync finds what is installed.
func New(cfg Config) (*Backend, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("iptables backend: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Masquerade && !cfg.ClusterCIDR.IsValid() {
		log.Warn("iptables backend: masquerade needs the cluster CIDR; pod traffic will keep its source")
	}
	return &Backend{cfg: cfg, cmd: newCommands(cfg), log: log}, nil
}

// Supported reports whether an algorithm can be expressed in iptables rules. Only random can:
// the statistic match has no memory of past choices or connection counts, and no hash of the
// source. Callers warn about the others and program them as random.
func Supported(algorithm string) bool {
	return algorithm == dataplane.AlgorithmRandom
}

// Sync makes the filter and nat tables hold the rules for st.
func (b *Backend) Sync(ctx context.Context, st *dataplane.State) error {
	if st == nil {
		return fmt.Errorf("iptables sync: nil state")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	start := time.Now()

	in := buildInput{
		st:          st,
		clusterCIDR: b.cfg.ClusterCIDR.Masked(),
		serviceCIDR: b.cfg.ServiceCIDR.Masked(),
		masquerade:  b.cfg.Masquerade,
		existing:    b.existing,
	}
	// present is set when this sync read the kernel, so jumps need no separate check.
	var present map[string]bool
	if b.existing == nil {
		kernel, err := readKernel(ctx, b.cmd)
		if err != nil {
			return fmt.Errorf("iptables sync: %w", err)
		}
		in.existing, in.staleJumps, present = fromKernel(kernel)
	}

	rs := build(in)
	if err := b.cmd.restoreInput(ctx, rs.text); err != nil {
		b.existing = nil // the kernel may hold anything now; look again next time
		return fmt.Errorf("iptables sync: %w", err)
	}
	b.existing = rs.chains
	if err := b.ensureJumps(ctx, present); err != nil {
		b.existing = nil
		return fmt.Errorf("iptables sync: %w", err)
	}

	chains := 0
	for _, cs := range rs.chains {
		chains += len(cs)
	}
	b.stats = Stats{Chains: chains, Rules: rs.rules, Bytes: len(rs.text), Skipped: len(rs.skipped),
		Duration: time.Since(start)}
	if len(rs.skipped) > 0 {
		b.log.Debug("service ports not programmed", "count", len(rs.skipped), "first", rs.skipped[0])
	}
	b.log.Debug("iptables synced", "services", len(st.Services), "chains", chains, "rules", rs.rules,
		"bytes", len(rs.text), "took", b.stats.Duration)
	return nil
}

// fromKernel splits what iptables-save showed into the chains of ours, the built-in chain
// rules into them that are not wanted (left by another version, or duplicates), and the set
// of wanted jumps already there.
func fromKernel(kernel map[string]kernelTable) (existing map[string]map[string]bool, stale map[string][]string, present map[string]bool) {
	wanted := make(map[string]bool)
	for _, j := range wantedJumps() {
		wanted[j.table+" "+j.key()] = true
	}
	existing = make(map[string]map[string]bool)
	stale = make(map[string][]string)
	present = make(map[string]bool)
	for table, kt := range kernel {
		existing[table] = kt.chains
		for _, rule := range kt.jumps {
			k := table + " " + rule
			if wanted[k] && !present[k] {
				present[k] = true
				continue
			}
			stale[table] = append(stale[table], rule)
		}
	}
	return existing, stale, present
}

// Stats returns the figures of the last successful Sync.
func (b *Backend) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stats
}

// RuleCount is the number of rules the last successful Sync programmed.
func (b *Backend) RuleCount() int { return b.Stats().Rules }
