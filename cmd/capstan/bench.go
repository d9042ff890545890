package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/test/bench/apibench"
	"github.com/capstan-net/capstan/test/bench/perfcluster"
	"github.com/capstan-net/capstan/test/bench/podbench"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run benchmarks that print figures",
	}
	api := &cobra.Command{
		Use:   "api",
		Short: "Pod creates/s and watch delivery latency against a fresh local server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			if path := v.GetString("cpuprofile"); path != "" {
				f, err := os.Create(path)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			// Protobuf is what Kubernetes' own components (controllers,
			// scheduler, kubelet) speak; --json measures kubectl-style clients.
			ct := "application/vnd.kubernetes.protobuf"
			if v.GetBool("json") {
				ct = "application/json"
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			res, err := apibench.Run(ctx, apibench.Config{
				Binary: self, Pods: v.GetInt("pods"), Watchers: v.GetInt("watchers"), Workers: v.GetInt("workers"),
				DataDir: v.GetString("data-dir"), ContentType: ct,
			}, log)
			if err != nil {
				return fmt.Errorf("bench api: %w", err)
			}
			res.Print(os.Stdout)
			return nil
		},
	}
	f := api.Flags()
	f.Int("pods", 10000, "pods to create")
	f.Int("watchers", 10, "concurrent pod watchers")
	f.Int("workers", 64, "concurrent creating clients")
	f.String("data-dir", "", "server data dir (default: a temporary directory)")
	f.String("cpuprofile", "", "write a CPU profile of the whole run (client and server) to this file")
	f.Bool("json", false, "use JSON instead of protobuf on the wire")
	cmd.AddCommand(api, newBenchPodsCmd(), newBenchServicesCmd(), newBenchPolicyCmd())
	return cmd
}

func newBenchPodsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pods",
		Short: "Create-to-Running latency (p50, p99) of pods on one node of the current cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			kc := v.GetString("kubeconfig")
			if kc == "" {
				kc = defaultKubeconfig()
			}
			rc, err := clientcmd.BuildConfigFromFlags("", kc)
			if err != nil {
				return fmt.Errorf("kubeconfig %s: %w", kc, err)
			}
			rc.QPS, rc.Burst = 200, 400
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			res, err := podbench.Run(ctx, cs, podbench.Config{
				Pods: v.GetInt("pods"), Node: v.GetString("node"), Image: v.GetString("image"),
				Parallel: v.GetInt("parallel"), Timeout: v.GetDuration("timeout"), Rate: v.GetFloat64("rate"),
			}, log)
			if err != nil {
				return fmt.Errorf("bench pods: %w", err)
			}
			res.Print(os.Stdout)
			return nil
		},
	}
	f := cmd.Flags()
	f.String("kubeconfig", "", "cluster to measure (default: as capstan kubectl finds it)")
	f.Int("pods", 50, "pods to start")
	f.String("node", "", "node to run them on (default: the first Ready node)")
	f.String("image", "capstan.local/echo:1.0", "image of the pods (must be on the node)")
	f.Int("parallel", 10, "concurrent create calls")
	f.Float64("rate", 5, "pods created per second (0: all at once)")
	f.Duration("timeout", 5*time.Minute, "give up after this long")
	return cmd
}

// addClusterBenchFlags adds the flags of the benchmarks that bring up local clusters
// (perfcluster.Options); echoUse says what the host capstan-echo is for, outFiles what --out gets.
func addClusterBenchFlags(f *pflag.FlagSet, echoUse, outFiles string) {
	f.String("echo-binary", "bin/capstan-echo", "capstan-echo built for this host (go build -o bin/capstan-echo ./test/images/echo), "+echoUse)
	f.StringSlice("images", []string{"bin/images/capstan-test-images.tar"}, "image archives with capstan.local/echo:1.0 (make images)")
	f.Duration("duration", 0, "length of each measurement (default 5s)")
	f.Int("connections", 1, "parallel connections (or connection loops) per measurement")
	f.String("out", "bench-results", "directory for "+outFiles+" (a timestamped subdirectory)")
}

// runClusterBench runs bench with the options of addClusterBenchFlags until it ends or a
// signal comes.
func runClusterBench(cmd *cobra.Command, bench func(ctx context.Context, v *viper.Viper, opts perfcluster.Options) error) error {
	v, log, err := setup(cmd)
	if err != nil {
		return err
	}
	opts, cleanup, err := clusterBenchOptions(cmd, v, log)
	if err != nil {
		return err
	}
	defer cleanup()
	ctx, cancel := signalContext()
	defer cancel()
	return bench(ctx, v, opts)
}

// clusterBenchOptions reads the flags of addClusterBenchFlags; the clusters run this binary,
// with their data in a temporary directory that cleanup removes.
func clusterBenchOptions(cmd *cobra.Command, v *viper.Viper, log *slog.Logger) (_ perfcluster.Options, cleanup func(), _ error) {
	self, err := os.Executable()
	if err != nil {
		return perfcluster.Options{}, nil, err
	}
	self, _ = filepath.EvalSymlinks(self)
	dir, err := os.MkdirTemp("", "capstan-bench-"+cmd.Name()+"-")
	if err != nil {
		return perfcluster.Options{}, nil, err
	}
	return perfcluster.Options{
		Binary:      self,
		EchoBinary:  v.GetString("echo-binary"),
		Images:      v.GetStringSlice("images"),
		Duration:    v.GetDuration("duration"),
		Connections: v.GetInt("connections"),
		OutDir:      v.GetString("out"),
		DataDir:     dir,
		Log:         log,
		Out:         cmd.OutOrStdout(),
	}, func() { os.RemoveAll(dir) }, nil
}
