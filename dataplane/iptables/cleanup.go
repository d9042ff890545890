package iptables

import (
	"bytes"
	"context"
	"fmt"
)

// Cleanup removes every chain of ours and every rule jumping to one, in the filter and nat
// tables of cfg.Netns, whoever installed them (this process, an earlier daemon, an older
// version). It is for switching a node to the eBPF mode and for `capstan down`; with nothing
// installed it does nothing.
func Cleanup(ctx context.Context, cfg Config) error {
	cmd := newCommands(cfg)
	kernel, err := readKernel(ctx, cmd)
	if err != nil {
		return fmt.Errorf("iptables cleanup: %w", err)
	}
	var in bytes.Buffer
	for _, name := range []string{"filter", "nat"} {
		kt := kernel[name]
		if len(kt.chains) == 0 && len(kt.jumps) == 0 {
			continue
		}
		t := newTable(name)
		// No chain is declared as wanted, so deleteStale flushes and deletes them all,
		// after the jumps into them.
		t.deleteStale(kt.chains, kt.jumps)
		t.writeTo(&in)
	}
	if in.Len() == 0 {
		return nil
	}
	if err := cmd.restoreInput(ctx, in.Bytes()); err != nil {
		return fmt.Errorf("iptables cleanup: %w", err)
	}
	return nil
}
