// Command capstan is Capstan's single binary: the control plane server,
// the node agent, the dataplane daemon, the local cluster tools and an
// embedded kubectl.
package main

import (
	"context"
	"fmt"
	"github.com/capstan-net/capstan/control/controllers/nodelifecycle"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"

	"github.com/capstan-net/capstan/control/apiserver"
	"github.com/capstan-net/capstan/control/server"
)

func main() {
	// kubectl parses its own flags; hand it the arguments untouched.
	if len(os.Args) > 1 && os.Args[1] == "kubectl" {
		os.Exit(runKubectl(os.Args[2:]))
	}
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "capstan",
		Short:         "Capstan: a Kubernetes-compatible cluster networked by eBPF",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.PersistentFlags().String("config", "", "YAML config file (flags and CAPSTAN_* environment variables override it)")
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(newServerCmd(), newVersionCmd(), newBenchCmd(), newDataplaneCmd(), newDPCmd(), &cobra.Command{
		Use:                "kubectl [args...]",
		Short:              "Run the embedded kubectl against the Capstan cluster",
		DisableFlagParsing: true,
		Run:                func(cmd *cobra.Command, args []string) { os.Exit(runKubectl(args)) },
	})
	root.AddCommand(newImagesCmd(), newAgentCmd(), newLogDriverCmd(), newUpCmd(), newDownCmd(), newNodeExecCmd())
	return root
}

// loadConfig binds a command's flags to viper so that each setting comes
// from the flag, else CAPSTAN_<FLAG>, else the config file, else the default.
func loadConfig(cmd *cobra.Command) (*viper.Viper, error) {
	v := viper.New()
	v.SetEnvPrefix("CAPSTAN")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	var bindErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err := v.BindPFlag(f.Name, f); err != nil {
			bindErr = err
		}
	})
	if bindErr != nil {
		return nil, bindErr
	}
	if path := v.GetString("config"); path != "" {
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("read config %s: %w", path, err)
		}
		if err := checkConfigKeys(cmd, path); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// checkConfigKeys refuses a config file key that is none of the command's flags: viper
// would ignore it, and a misspelt setting would silently keep its default.
func checkConfigKeys(cmd *cobra.Command, path string) error {
	fv := viper.New()
	fv.SetConfigFile(path)
	fv.SetConfigType("yaml")
	if err := fv.ReadInConfig(); err != nil {
		return fmt.Errorf("read config %s: %w", path, err)
	}
	var unknown []string
	for k := range fv.AllSettings() {
		if cmd.Flags().Lookup(k) == nil {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("config %s: unknown key(s) %s: the keys are the flags of %q (see --help)",
			path, strings.Join(unknown, ", "), cmd.CommandPath())
	}
	return nil
}

// setup reads a command's configuration and makes its logger.
func setup(cmd *cobra.Command) (*viper.Viper, *slog.Logger, error) {
	v, err := loadConfig(cmd)
	if err != nil {
		return nil, nil, err
	}
	log, err := newLogger(v.GetString("log-level"))
	return v, log, err
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func newServerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: API server on etcd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			cfg := server.Config{
				DataDir:            v.GetString("data-dir"),
				BindAddress:        v.GetString("bind-address"),
				SecurePort:         v.GetInt("secure-port"),
				AdvertiseAddress:   v.GetString("advertise-address"),
				EtcdServers:        v.GetStringSlice("etcd-endpoints"),
				EtcdCertFile:       v.GetString("etcd-certfile"),
				EtcdKeyFile:        v.GetString("etcd-keyfile"),
				EtcdCAFile:         v.GetString("etcd-cafile"),
				EtcdPrefix:         v.GetString("etcd-prefix"),
				ServiceCIDR:        v.GetString("service-cidr"),
				NodePortRange:      v.GetString("service-node-port-range"),
				CompactionInterval: v.GetDuration("compaction-interval"),
				BookmarkInterval:   v.GetDuration("bookmark-interval"),
				Controllers: server.ControllersConfig{
					Enabled:          v.GetStringSlice("controllers"),
					LeaderElect:      v.GetBool("leader-elect"),
					ClusterCIDR:      v.GetString("cluster-cidr"),
					NodeCIDRMaskSize: v.GetInt("node-cidr-mask-size"),
					NodeLifecycle: nodelifecycle.Config{
						GracePeriod:       v.GetDuration("node-monitor-grace-period"),
						TolerationSeconds: v.GetInt64("default-unreachable-toleration-seconds"),
					},
				},
			}
			if cfg.Controllers.NodeLifecycle.GracePeriod < 0 || cfg.Controllers.NodeLifecycle.TolerationSeconds < 0 {
				return fmt.Errorf("--node-monitor-grace-period and --default-unreachable-toleration-seconds must not be negative")
			}
			if cfg.SecurePort < 0 || cfg.SecurePort > 65535 {
				return fmt.Errorf("--secure-port %d is out of range 0-65535", cfg.SecurePort)
			}
			ctx, cancel := signalContext()
			defer cancel()
			return server.Run(ctx, cfg, log)
		},
	}
	f := cmd.Flags()
	f.String("data-dir", "/var/lib/capstan", "directory for etcd data, certificates and kubeconfigs")
	f.String("bind-address", "0.0.0.0", "address to serve HTTPS on")
	f.Int("secure-port", 6443, "port to serve HTTPS on (0 picks a free one)")
	f.String("advertise-address", "", "address written into kubeconfigs (default: bind address, or 127.0.0.1)")
	f.StringSlice("etcd-endpoints", nil, "external etcd endpoints; empty runs an embedded etcd")
	f.String("etcd-certfile", "", "client certificate for external etcd")
	f.String("etcd-keyfile", "", "client key for external etcd")
	f.String("etcd-cafile", "", "CA bundle for external etcd")
	f.String("etcd-prefix", "", "key prefix isolating this cluster inside a shared etcd")
	f.String("service-cidr", "10.96.0.0/16", "range for Service ClusterIPs")
	f.String("service-node-port-range", "30000-32767", "range for NodePorts")
	f.Duration("compaction-interval", 0, "interval between etcd compactions (default 5m)")
	f.Duration("bookmark-interval", 0, "interval between watch bookmarks (default 1m)")
	f.StringSlice("controllers", []string{"*"}, `control loops to run: "*" for all, "name" to enable, "-name" to disable (scheduler, replicaset, deployment, daemonset, endpointslice, nodeipam, nodelifecycle, garbagecollector, namespace)`)
	f.String("cluster-cidr", "10.244.0.0/16", "range that node pod CIDRs are carved from")
	f.Int("node-cidr-mask-size", 24, "prefix length of each node's pod CIDR")
	f.Duration("node-monitor-grace-period", nodelifecycle.DefaultGracePeriod, "how long a node may go without a heartbeat before it is marked unreachable")
	f.Int64("default-unreachable-toleration-seconds", nodelifecycle.DefaultTolerationSeconds, "how long pods without their own toleration stay on an unreachable node before eviction")
	f.Bool("leader-elect", true, "run control loops only in the server holding their Lease, for several servers on one etcd")
	return cmd
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Printf("capstan %s (Kubernetes API %s.%s)\n", apiserver.Version.GitVersion, apiserver.Version.Major, apiserver.Version.Minor)
		},
	}
}

// defaultKubeconfig is the local cluster's kubeconfig if `capstan up`
// wrote one, else the server's admin kubeconfig.
func defaultKubeconfig() string {
	if p := os.Getenv("CAPSTAN_KUBECONFIG"); p != "" {
		return p
	}
	dataDir := os.Getenv("CAPSTAN_DATA_DIR")
	if dataDir == "" {
		dataDir = "/var/lib/capstan"
	}
	for _, p := range []string{filepath.Join(dataDir, "cluster", "kubeconfig"), server.AdminKubeconfig(dataDir)} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func runKubectl(args []string) int {
	if os.Getenv("KUBECONFIG") == "" && !hasKubeconfigFlag(args) {
		if p := defaultKubeconfig(); p != "" {
			os.Setenv("KUBECONFIG", p)
		}
	}
	cmd := kubectlcmd.NewDefaultKubectlCommand()
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		return 1
	}
	return 0
}

func hasKubeconfigFlag(args []string) bool {
	for _, a := range args {
		if a == "--kubeconfig" || strings.HasPrefix(a, "--kubeconfig=") {
			return true
		}
	}
	return false
}
