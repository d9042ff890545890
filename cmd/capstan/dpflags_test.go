package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// capstan agent and capstan dataplane take the dataplane's settings under
// the same names with the same defaults and help.
func TestDataplaneFlagsShared(t *testing.T) {
	shared := pflag.NewFlagSet("shared", pflag.ContinueOnError)
	addDataplaneFlags(shared)
	agent, dp := newAgentCmd().Flags(), newDataplaneCmd().Flags()
	n := 0
	shared.VisitAll(func(f *pflag.Flag) {
		n++
		for name, fs := range map[string]*pflag.FlagSet{"agent": agent, "dataplane": dp} {
			g := fs.Lookup(f.Name)
			if g == nil {
				t.Errorf("capstan %s has no --%s", name, f.Name)
				continue
			}
			if g.DefValue != f.DefValue || g.Usage != f.Usage {
				t.Errorf("capstan %s --%s: default %q (%s), want %q (%s)", name, f.Name, g.DefValue, g.Usage, f.DefValue, f.Usage)
			}
		}
	})
	if n < 20 {
		t.Fatalf("only %d shared flags", n)
	}
	// The old, differing names are gone.
	for _, old := range []string{"default-algorithm", "pin-dir", "dataplane-devices", "dataplane-cgroup", "dataplane-metrics-addr", "proxy-healthz-addr", "endpoints-dir", "cgroup"} {
		if agent.Lookup(old) != nil || dp.Lookup(old) != nil {
			t.Errorf("--%s is still a flag", old)
		}
	}
}

func TestDataplaneConfigBadInput(t *testing.T) {
	for flag, value := range map[string]string{
		"cluster-cidr": "10.244.0.0/33", "service-cidr": "banana", "snat-addr": "fd00::1", "mtu": "100",
	} {
		cmd := newDataplaneCmd()
		if err := cmd.Flags().Parse([]string{"--" + flag + "=" + value}); err != nil {
			t.Fatal(err)
		}
		v, err := loadConfig(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dataplaneConfig(v); err == nil || !strings.Contains(err.Error(), "--"+flag) {
			t.Errorf("--%s=%s: %v, want an error naming the flag", flag, value, err)
		}
	}
}
