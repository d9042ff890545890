// Command capstan is Capstan's single binary: the control plane server,
// the node agent, the dataplane daemon, the local cluster tools and an
// embedded kubectl.
package main

import (
	"context"
	"fmt"
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
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"

	"github.com/capstan-net/capstan/control/server"
)

func main() {
	// kubectl parses its own flags; hand it the arguments untouched. A
	// link named kubectl runs it too, as k3s's does.
	if filepath.Base(os.Args[0]) == "kubectl" {
		os.Exit(runKubectl(os.Args[1:]))
	}
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
	// The upstream components register --version on the process-wide flag
	// set, which cobra shows on every command; `capstan version` is ours.
	pflag.CommandLine.MarkHidden("version")
	root.PersistentFlags().String("config", "", "YAML config file (flags and CAPSTAN_* environment variables override it)")
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(newServerCmd(), newVersionCmd(), newBenchCmd(), newDataplaneCmd(), newDPCmd(), &cobra.Command{
		Use:                "kubectl [args...]",
		Short:              "Run the embedded kubectl against the Capstan cluster",
		DisableFlagParsing: true,
		Run:                func(cmd *cobra.Command, args []string) { os.Exit(runKubectl(args)) },
	})
	root.AddCommand(newImagesCmd(), newAgentCmd(), newUpCmd(), newDownCmd(), newNodeExecCmd(), newNodeInitCmd())
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
		Short: "Run the control plane: kube-apiserver, kube-controller-manager and kube-scheduler on etcd",
		Long: `Run the control plane: the upstream kube-apiserver, kube-controller-manager and
kube-scheduler in this process, on an embedded etcd (or --etcd-endpoints). The first
start writes the PKI, admin.kubeconfig and the join token under --data-dir.

Any upstream flag can be set with --kube-apiserver-arg, --kube-controller-manager-arg
and --kube-scheduler-arg (name=value, repeatable); they override Capstan's defaults.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			cfg := server.Config{
				DataDir:               v.GetString("data-dir"),
				BindAddress:           v.GetString("bind-address"),
				SecurePort:            v.GetInt("secure-port"),
				AdvertiseAddress:      v.GetString("advertise-address"),
				ExtraSANs:             v.GetStringSlice("tls-san"),
				EtcdEndpoints:         v.GetStringSlice("etcd-endpoints"),
				EtcdCertFile:          v.GetString("etcd-certfile"),
				EtcdKeyFile:           v.GetString("etcd-keyfile"),
				EtcdCAFile:            v.GetString("etcd-cafile"),
				EtcdPrefix:            v.GetString("etcd-prefix"),
				ServiceCIDR:           v.GetString("service-cidr"),
				ClusterCIDR:           v.GetString("cluster-cidr"),
				NodeCIDRMaskSize:      v.GetInt("node-cidr-mask-size"),
				NodePortRange:         v.GetString("service-node-port-range"),
				ClusterDomain:         v.GetString("cluster-domain"),
				ClusterDNS:            v.GetString("cluster-dns"),
				UpstreamDNS:           v.GetStringSlice("upstream-dns"),
				DisableAddons:         v.GetStringSlice("disable-addon"),
				LeaderElect:           v.GetBool("leader-elect"),
				APIServerArgs:         v.GetStringSlice("kube-apiserver-arg"),
				ControllerManagerArgs: v.GetStringSlice("kube-controller-manager-arg"),
				SchedulerArgs:         v.GetStringSlice("kube-scheduler-arg"),
				Log:                   log,
			}
			ctx, cancel := signalContext()
			defer cancel()
			return server.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.String("data-dir", server.DefaultDataDir, "directory for etcd data, certificates, kubeconfigs and the join token")
	f.String("bind-address", "0.0.0.0", "address kube-apiserver serves HTTPS on")
	f.Int("secure-port", 6443, "port kube-apiserver serves HTTPS on")
	f.String("advertise-address", "", "address nodes and kubeconfigs use, and the kubernetes Service's endpoint (default: the bind address, else the default route's)")
	f.StringSlice("tls-san", nil, "more host names or addresses for the API server's certificate")
	f.StringSlice("etcd-endpoints", nil, "external etcd endpoints; empty runs an embedded etcd (TLS on loopback) under the data dir")
	f.String("etcd-certfile", "", "client certificate for external etcd")
	f.String("etcd-keyfile", "", "client key for external etcd")
	f.String("etcd-cafile", "", "CA bundle for external etcd")
	f.String("etcd-prefix", "", "key prefix of this cluster in a shared etcd (kube-apiserver's --etcd-prefix; default /registry)")
	f.String("service-cidr", server.DefaultServiceCIDR, "range for Service ClusterIPs")
	f.String("service-node-port-range", server.DefaultNodePortRange, "range for NodePorts")
	f.String("cluster-cidr", server.DefaultClusterCIDR, "range that node pod CIDRs are carved from (kube-controller-manager's node IPAM)")
	f.Int("node-cidr-mask-size", 24, "prefix length of each node's pod CIDR")
	f.String("cluster-domain", server.DefaultClusterDomain, "the cluster's DNS domain (cluster DNS, service-account token issuer, certificate names)")
	f.String("cluster-dns", "", "the cluster DNS Service's address, inside --service-cidr (default: its tenth address, 10.96.0.10 for the default range)")
	f.StringSlice("upstream-dns", nil, "where cluster DNS sends names outside the cluster: resolver addresses (IP or IP:port), or none to answer them at once with a failure (default: the node's /etc/resolv.conf)")
	f.StringArray("disable-addon", nil, "add-on not to deploy, removing it if it was (repeatable): coredns")
	f.Bool("leader-elect", true, "run controller-manager and scheduler loops only in the server holding their Lease, for several servers on one etcd")
	f.StringArray("kube-apiserver-arg", nil, "kube-apiserver flag as name=value (repeatable); overrides Capstan's default")
	f.StringArray("kube-controller-manager-arg", nil, "kube-controller-manager flag as name=value (repeatable)")
	f.StringArray("kube-scheduler-arg", nil, "kube-scheduler flag as name=value (repeatable)")
	return cmd
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			v := version.Get()
			fmt.Printf("capstan %s (Kubernetes %s)\n", v.GitVersion, v.GitVersion)
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
