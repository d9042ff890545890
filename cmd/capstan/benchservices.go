package main

import (
	"context"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/capstan-net/capstan/test/bench/perfcluster"
	"github.com/capstan-net/capstan/test/bench/servicebench"
)

func newBenchServicesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "services",
		Short: "Service throughput, connection rate and latency, eBPF mode against iptables mode, on fresh 2-node local clusters",
		Long: `Brings up a 2-node local cluster in each mode in turn (capstan up --mode ...), runs the same
server and client pods, installs 1, 1,000 and 10,000 Services, and measures TCP stream
throughput (pod to pod directly, pod to ClusterIP on the same node and across nodes, outside
to NodePort), request/response and new-connection rates with latency percentiles, the time to
program many Services and to follow one EndpointSlice update, and the agent's memory with the
size of its BPF maps or iptables rules. Prints a table; writes results.json and chart.svg
under --out. Needs root, make build, the test images and a host
build of capstan-echo (make bench builds both).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if from, _ := cmd.Flags().GetString("from"); from != "" {
				return servicebench.Reprint(cmd.OutOrStdout(), from)
			}
			return runClusterBench(cmd, func(ctx context.Context, v *viper.Viper, opts perfcluster.Options) error {
				_, err := servicebench.Run(ctx, servicebench.Config{
					Options:       opts,
					Modes:         v.GetStringSlice("modes"),
					KubeProxy:     v.GetString("kube-proxy"),
					ServiceCounts: v.GetIntSlice("services"),
					EndpointsMin:  v.GetInt("endpoints-min"),
					EndpointsMax:  v.GetInt("endpoints-max"),
					Repeat:        v.GetInt("repeat"),
				})
				return err
			})
		},
	}
	f := cmd.Flags()
	addClusterBenchFlags(f, "the outside client", "results.json and chart.svg")
	f.StringSlice("modes", nil, `service modes to compare, in order: ebpf, iptables, none (default: ebpf and iptables, plus none with --kube-proxy)`)
	f.String("kube-proxy", "", "upstream kube-proxy binary (tools/kube-proxy/build.sh): adds a column for mode none with kube-proxy in iptables mode")
	f.IntSlice("services", []int{1, 1000, 10000}, "Service counts to measure at (the measured Services are last in any ordered list)")
	f.Int("endpoints-min", 2, "fewest endpoints per filler Service")
	f.Int("endpoints-max", 10, "most endpoints per filler Service")
	f.String("from", "", "print the table and target checks of an earlier run's results.json instead of measuring")
	f.Int("repeat", 3, "runs of each measurement, taking turns with the other paths; the table shows the median")
	return cmd
}
