package main

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/capstan-net/capstan/cluster"
)

func clusterConfig(v *viper.Viper) (cluster.Config, error) {
	cfg := cluster.Config{
		Name:      v.GetString("name"),
		DataDir:   v.GetString("data-dir"),
		RunDir:    v.GetString("run-dir"),
		Nodes:     v.GetInt("nodes"),
		Routing:   v.GetString("routing"),
		Mode:      v.GetString("mode"),
		KubeProxy: v.GetString("kube-proxy"),
		Network:   v.GetString("network"),
		Port:      v.GetInt("port"),
		Images:    v.GetStringSlice("images"),
	}
	if s := v.GetString("subnet"); s != "" {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, fmt.Errorf("--subnet: %w", err)
		}
		cfg.Subnet = p
	}
	self, err := os.Executable()
	if err != nil {
		return cfg, err
	}
	cfg.Binary, _ = filepath.EvalSymlinks(self)
	return cfg, nil
}

func clusterFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.String("name", cluster.DefaultName, "cluster name; prefixes its network namespaces and links")
	f.String("data-dir", "/var/lib/capstan", "state directory (the cluster's is <data-dir>/cluster)")
	f.String("run-dir", "/run/capstan", "runtime directory")
	f.String("subnet", cluster.DefaultSubnet, "underlay /24: the host is .1, nodes .11 and up, the outside client .250")
}

func newUpCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start (or resume) a local multi-node cluster, each node a network namespace",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			cfg, err := clusterConfig(v)
			if err != nil {
				return err
			}
			cfg.Log = log
			ctx, cancel := signalContext()
			defer cancel()
			st, err := cluster.Up(ctx, cfg)
			if err != nil {
				return err
			}
			kc := cluster.Kubeconfig(cfg.DataDir)
			if cfg.Network == "none" {
				u, _ := url.Parse(st.Server)
				fmt.Fprintf(cmd.OutOrStdout(), `Cluster %q is up with no pod network and no Service proxy: API server %s, nodes %v NotReady until a network is installed.
Kubeconfig: %s. Capstan's chart, with this cluster's per-node paths:
  capstan images import --cluster --data-dir %s --run-dir %s bin/images/capstan.tar   (make images builds it; or up --images)
  helm install capstan deploy/helm/capstan -n kube-system --kubeconfig %s \
    --set k8sServiceHost=%s --set k8sServicePort=%s --set runDir=%s \
    --set 'cni.binDir=%s' --set 'cni.confDir=%s' --set 'cgroup.path=/capstan/$(NODE_NAME)'
Remove everything with: capstan down
`, st.Name, st.Server, st.Nodes, kc, cfg.DataDir, cfg.RunDir, kc, u.Hostname(), u.Port(), cfg.RunDir,
					cluster.CNIBinDir(cfg.DataDir, "$(NODE_NAME)"), cluster.CNIConfDir(cfg.DataDir, "$(NODE_NAME)"))
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), `Cluster %q is ready: API server %s, nodes %v (%s routing, %s mode).
Kubeconfig: %s (capstan kubectl uses it; or export KUBECONFIG=%s)
  capstan kubectl get nodes -o wide
  capstan dp services --node-name %s      (a node's eBPF maps)
  capstan node-exec %s -- curl http://<ClusterIP>/   (a command as a node's own process)
  ip netns exec %s-outside curl http://<node IP>:<nodePort>/    (a client outside the cluster)
Logs: %s/cluster/logs/. Remove everything with: capstan down
`, st.Name, st.Server, st.Nodes, st.Routing, st.Mode, kc, kc, st.Nodes[0], st.Nodes[0], st.Name, cfg.DataDir)
			return nil
		},
	}
	clusterFlags(cmd)
	f := cmd.Flags()
	f.Int("nodes", 3, "number of nodes")
	f.String("routing", "native", "pod routing between nodes: native or vxlan")
	f.String("mode", "ebpf", "how nodes implement Services: ebpf, iptables (kube-proxy-style rules, for comparison), or none (with --kube-proxy)")
	f.String("network", "capstan", "the nodes' pod network: capstan (every agent runs the dataplane) or none (no pod network and no Service proxy, nodes NotReady until one is installed, e.g. helm install capstan deploy/helm/capstan)")
	f.String("kube-proxy", "", "with --mode none: the upstream kube-proxy binary every node runs in iptables mode (tools/kube-proxy/build.sh)")
	f.Int("port", 6443, "API server port on the underlay address")
	f.StringSlice("images", nil, "image archives every node imports (make images builds bin/images/capstan-test-images.tar)")
	return cmd
}

func newDownCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the local cluster and remove everything it made",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			cfg, err := clusterConfig(v)
			if err != nil {
				return err
			}
			cfg.Log = log
			ctx, cancel := signalContext()
			defer cancel()
			return cluster.Down(ctx, cfg)
		},
	}
	clusterFlags(cmd)
	return cmd
}

// newNodeExecCmd runs a command as one of the local cluster's nodes, like
// `docker exec` into a kind node: in its network namespace and cgroup.
func newNodeExecCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node-exec NODE -- COMMAND [ARG...]",
		Short: "Run a command as a node of the local cluster (its network namespace and cgroup)",
		Example: `  capstan node-exec node-1 -- ip route
  capstan node-exec node-2 -- curl -s http://10.96.0.10/`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, _, err := setup(cmd)
			if err != nil {
				return err
			}
			cfg, err := clusterConfig(v)
			if err != nil {
				return err
			}
			c, done, err := cluster.NodeCommand(cfg, args[0], args[1:]...)
			if err != nil {
				return err
			}
			defer done()
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := c.Run(); err != nil {
				var exit *exec.ExitError
				if errors.As(err, &exit) {
					os.Exit(exit.ExitCode())
				}
				return err
			}
			return nil
		},
	}
	clusterFlags(cmd)
	return cmd
}
