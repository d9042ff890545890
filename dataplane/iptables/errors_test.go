package iptables

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capstan-net/capstan/internal/netnstest"
)

// A rule iptables-restore refuses is reported with its line, from the real binary. Errors
// found only at commit (a jump to a missing chain) blame the COMMIT line, so iptables' own
// message must come along.
func TestRestoreErrorFromIptables(t *testing.T) {
	t.Parallel()
	ns := netnstest.New(t, "bad-input")
	cmd := newCommands(Config{Netns: ns.Path()})
	for bad, want := range map[string]string{
		"-A CAPSTAN-SERVICES -p tcp -m tcp --dport 99999 -j ACCEPT": `input line 3 "-A CAPSTAN-SERVICES -p tcp -m tcp --dport 99999 -j ACCEPT"`,
		"-A CAPSTAN-SERVICES -j CAPSTAN-NOWHERE":                    "CAPSTAN-NOWHERE",
	} {
		input := []byte("*nat\n:CAPSTAN-SERVICES - [0:0]\n" + bad + "\nCOMMIT\n")
		err := cmd.restoreInput(context.Background(), input)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %s", err, want)
		}
		t.Log(err)
	}
}

// A failed sync says why and where, and the next one starts over from what the kernel holds.
func TestSyncAfterFailure(t *testing.T) {
	t.Parallel()
	ns := netnstest.New(t, "failing")
	fake := filepath.Join(t.TempDir(), "iptables-restore")
	script := "#!/bin/sh\ncat >/dev/null\necho 'iptables-restore: line 3 failed' >&2\nexit 1\n"
	must(t, "fake restore", os.WriteFile(fake, []byte(script), 0o755))

	cfg := Config{Netns: ns.Path(), ClusterCIDR: testClusterCIDR}
	good, err := New(cfg)
	must(t, "new", err)
	ctx := context.Background()
	must(t, "sync", good.Sync(ctx, testState()))

	cfg.IptablesRestore = fake
	bad, err := New(cfg)
	must(t, "new", err)
	err = bad.Sync(ctx, testState())
	if err == nil || !strings.Contains(err.Error(), "input line 3") || !strings.Contains(err.Error(), "line 3 failed") {
		t.Fatalf("sync error %v, want input line 3 and iptables-restore's message", err)
	}
	if bad.existing != nil {
		t.Errorf("failed sync kept its idea of the kernel's chains")
	}

	// The good backend, meanwhile, still believes in its chains: remove one behind its back
	// and make it fail, then check the following sync repairs everything.
	must(t, "cleanup", Cleanup(ctx, Config{Netns: ns.Path()}))
	good.cmd.restore = fake
	if err := good.Sync(ctx, testState()); err == nil {
		t.Fatal("sync with a failing iptables-restore succeeded")
	}
	good.cmd.restore = "iptables-restore"
	must(t, "sync after failure", good.Sync(ctx, testState()))
	rules := saveRules(t, ns)
	if n := countPrefix(rules, " -A "+chainPrefix); n != good.RuleCount() {
		t.Errorf("after recovery the kernel holds %d rules of ours, want %d", n, good.RuleCount())
	}
	if jumps := builtinJumps(rules); len(jumps) != len(wantedJumps()) {
		t.Errorf("after recovery %d jumps, want %d", len(jumps), len(wantedJumps()))
	}
}
