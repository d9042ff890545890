package main

import (
	"context"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/capstan-net/capstan/test/bench/perfcluster"
	"github.com/capstan-net/capstan/test/bench/policybench"
)

func newBenchPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Connection and request rates to a pod selected by NetworkPolicies of 0, 100 and 1,000 rules, on a fresh 2-node local cluster",
		Long: `Brings up a 2-node local cluster in eBPF mode (capstan up), runs a server pod on the second
node and client pods on both, and for each rule count installs NetworkPolicies selecting the
server: N ingress rules that never match the clients (each a TCP port from an unused /32,
--rules-per-policy to a policy), then one policy admitting the clients on the perf port. 0
rules is no policy at all. Once the server's node enforces them (its maps hold every entry, the
clients get through and a pod no rule admits does not), measures new-connection (crr) and
request/response (rr) rates with latency percentiles from each client to the server's pod
address; with --rounds, goes through the rule counts again, and the table shows each figure's
median run. Prints a table with each rate against the fewest rules; writes results.json under
--out; takes the cluster down. Needs root, make build, the test
images and a host build of capstan-echo (make bench builds both). The programs' own cost per
packet: go test -run XXX -bench BenchmarkPolicy ./dataplane/ebpf/.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runClusterBench(cmd, func(ctx context.Context, v *viper.Viper, opts perfcluster.Options) error {
				_, err := policybench.Run(ctx, policybench.Config{
					Options:        opts,
					Rules:          v.GetIntSlice("rules"),
					RulesPerPolicy: v.GetInt("rules-per-policy"),
					Rounds:         v.GetInt("rounds"),
				})
				return err
			})
		},
	}
	f := cmd.Flags()
	addClusterBenchFlags(f, "for probes from pods", "results.json")
	f.IntSlice("rules", []int{0, 100, 1000}, "ingress rule counts selecting the server, in order (0: no policy)")
	f.Int("rules-per-policy", 10, "rules per NetworkPolicy")
	f.Int("rounds", 1, "rounds of every rule count in turn; the table shows each figure's median run")
	return cmd
}
