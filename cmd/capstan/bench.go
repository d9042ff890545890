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
	"github.com/capstan-net/capstan/test/bench/schedbench"
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
				DataDir: v.GetString("data-dir"), ContentType: ct, ServerArgs: v.GetStringSlice("server-arg"),
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
	f.String("cpuprofile", "", "write a CPU profile of the load generator to this file (the server is a child process: profile it with --server-arg=--kube-apiserver-arg=profiling=true and its /debug/pprof)")
	f.Bool("json", false, "use JSON instead of protobuf on the wire")
	addServerArgFlag(f)
	cmd.AddCommand(api, newBenchSchedulerCmd(), newBenchPodsCmd(), newBenchRSSCmd(), newBenchServicesCmd(), newBenchPolicyCmd())
	return cmd
}

// addServerArgFlag adds --server-arg, extra flags of the benchmark's own
// server, to try component tuning without changing Capstan's defaults.
func addServerArgFlag(f *pflag.FlagSet) {
	f.StringArray("server-arg", nil, "extra capstan server flag, repeatable, e.g. --server-arg=--kube-scheduler-arg=kube-api-qps=500")
}

func newBenchSchedulerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Pods bound/s by the upstream scheduler of a fresh local server, on simulated nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			res, err := schedbench.Run(ctx, schedbench.Config{
				Binary: self, Nodes: v.GetInt("nodes"), Pods: v.GetInt("pods"), Workers: v.GetInt("workers"),
				DataDir: v.GetString("data-dir"), ServerArgs: v.GetStringSlice("server-arg"), Timeout: v.GetDuration("timeout"),
			}, log)
			if err != nil {
				return fmt.Errorf("bench scheduler: %w", err)
			}
			res.Print(os.Stdout)
			return nil
		},
	}
	f := cmd.Flags()
	f.Int("pods", 5000, "pending pods to create (100m cpu, 64Mi each)")
	f.Int("nodes", 100, "simulated Ready nodes (8 cpu, 16Gi, 110 pods each)")
	f.Int("workers", 32, "concurrent creating clients")
	f.String("data-dir", "", "server data dir (default: a temporary directory)")
	f.Duration("timeout", 10*time.Minute, "give up waiting for the last binding after this long")
	addServerArgFlag(f)
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
			cs, err := benchClient(v.GetString("kubeconfig"))
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

// benchClient reaches an existing cluster through kc (default: as capstan
// kubectl finds it), with room for bursts of creates.
func benchClient(kc string) (kubernetes.Interface, error) {
	if kc == "" {
		kc = defaultKubeconfig()
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kc, err)
	}
	rc.QPS, rc.Burst = 200, 400
	return kubernetes.NewForConfig(rc)
}

func newBenchRSSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rss",
		Short: "Memory (RSS) of a local cluster's server, agent and containerd, idle and with pods on one node",
		Long: `Reads the resident memory (VmRSS) of the server, of one node's agent and of the
agent's containerd (and the node's shims) of a cluster capstan up started, first with
no benchmark pods, then with --pods pods running on the node; then deletes them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			dataDir := v.GetString("data-dir")
			kc := v.GetString("kubeconfig")
			if kc == "" {
				kc = filepath.Join(dataDir, "cluster", "kubeconfig")
			}
			cs, err := benchClient(kc)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			res, err := podbench.RunRSS(ctx, cs, podbench.RSSConfig{
				DataDir: dataDir, Node: v.GetString("node"), Pods: v.GetInt("pods"), Image: v.GetString("image"),
				Rate: v.GetFloat64("rate"), Settle: v.GetDuration("settle"), Timeout: v.GetDuration("timeout"),
			}, log)
			if err != nil {
				return fmt.Errorf("bench rss: %w", err)
			}
			res.Print(os.Stdout)
			return nil
		},
	}
	f := cmd.Flags()
	f.String("data-dir", "/var/lib/capstan", "the cluster's data dir, as given to capstan up (pid files under <data-dir>/cluster)")
	f.String("kubeconfig", "", "the cluster's kubeconfig (default: <data-dir>/cluster/kubeconfig)")
	f.Int("pods", 100, "pods to run on the node for the second reading")
	f.String("node", "", "node to measure (default: the first Ready node)")
	f.String("image", "capstan.local/echo:1.0", "image of the pods (must be on the node)")
	f.Float64("rate", 5, "pods created per second (0: all at once)")
	f.Duration("settle", 15*time.Second, "wait before each reading")
	f.Duration("timeout", 5*time.Minute, "give up on the pods after this long")
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
