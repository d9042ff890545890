package main

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"k8s.io/client-go/rest"

	"github.com/capstan-net/capstan/cni/install"
	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/dataplane/ebpf"
)

func newDataplaneCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dataplane",
		Short: "Run the node's eBPF dataplane: Services, routing, NetworkPolicy and its CNI configuration",
		Long: `Run the node's dataplane on a node whose kubelet runs elsewhere: what Capstan's
DaemonSet runs (deploy/helm/capstan). It loads and attaches the eBPF programs, follows
the cluster's Services, EndpointSlices, Nodes and NetworkPolicies, and, given
--cni-conf-dir, writes the node's CNI configuration once its programs are attached
and the node has its pod CIDRs.

With --daemonset, the daemon removes everything it installed on the node when it
exits because that DaemonSet was deleted; otherwise its maps and programs stay, so a
restart or rolling update keeps established connections.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			cfg, err := nodeDataplaneConfig(v)
			if err != nil {
				return err
			}
			cfg.Logger = log
			ctx, cancel := signalContext()
			defer cancel()
			return daemon.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.String("kubeconfig", "", "kubeconfig of the cluster (default: the local cluster's, else the pod's in-cluster credentials)")
	f.String("node-name", "", "this node's name (default: the hostname)")
	f.String("netns", "", "network namespace path the devices are in (default: the daemon's)")
	f.StringSlice("node-addrs", nil, "addresses NodePorts answer on (default: the Node object's InternalIPs)")
	f.String("cni-conf-dir", "", "write the node's CNI configuration here once the programs are attached (empty: none)")
	f.String("cni-bin-dir", "/opt/cni/bin", "CNI plugin directory capstan-cni is installed in (capstan node-init copies it there)")
	f.String("run-dir", "/run/capstan", "runtime directory; the node's pod records and address allocations are in <run-dir>/<node>")
	f.String("proc-dir", "/proc", "where the node's /proc is seen (a container gives the host's, its own /proc/sys being read-only)")
	f.String("daemonset", "", "namespace/name of the DaemonSet running this daemon: when it is deleted, the daemon cleans the node on its way out")
	addDataplaneFlags(f)
	return cmd
}

// nodeDataplaneConfig reads `capstan dataplane`'s flags.
func nodeDataplaneConfig(v *viper.Viper) (daemon.Config, error) {
	cfg, err := dataplaneConfig(v)
	if err != nil {
		return cfg, err
	}
	cfg.Kubeconfig, cfg.NodeName, cfg.Netns = v.GetString("kubeconfig"), v.GetString("node-name"), v.GetString("netns")
	cfg.ProcDir, cfg.DaemonSet = v.GetString("proc-dir"), v.GetString("daemonset")
	if cfg.Kubeconfig == "" {
		cfg.Kubeconfig = defaultKubeconfig()
	}
	if cfg.Kubeconfig == "" {
		// In a pod: its ServiceAccount, and the API server the chart's
		// k8sServiceHost names where no kube-proxy serves the kubernetes Service.
		if cfg.RestConfig, err = rest.InClusterConfig(); err != nil {
			return cfg, fmt.Errorf("no kubeconfig (--kubeconfig) and not in a pod: %w", err)
		}
	}
	if cfg.NodeName == "" {
		if cfg.NodeName, err = os.Hostname(); err != nil {
			return cfg, fmt.Errorf("--node-name: %w", err)
		}
	}
	for _, s := range v.GetStringSlice("node-addrs") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return cfg, fmt.Errorf("--node-addrs: %w", err)
		}
		cfg.NodeAddrs = append(cfg.NodeAddrs, a)
	}
	rel := v.GetString("socket-lb-cgroup")
	if rel == "" {
		rel = "/"
	}
	if cfg.CgroupDir, err = cgroupDir(v.GetString("cgroup-mount"), rel); err != nil {
		return cfg, err
	}
	node := filepath.Join(v.GetString("run-dir"), cfg.NodeName)
	cfg.EndpointsDir = filepath.Join(node, "endpoints")
	cfg.CNI.ConfDir, cfg.CNI.BinDir, cfg.CNI.IPAMDir = v.GetString("cni-conf-dir"), v.GetString("cni-bin-dir"), filepath.Join(node, "ipam")
	if _, err := os.Stat(filepath.Join(cfg.CNI.BinDir, install.PortmapName)); err == nil {
		cfg.CNI.Portmap = install.PortmapName
	}
	return cfg, nil
}

// newDPCmd prints a node's pinned maps in human form, read-only, in the spirit of
// `cilium bpf lb list`.
func newDPCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dp",
		Short: "Show the eBPF dataplane's live maps on this node",
	}
	cmd.PersistentFlags().String("node-name", "", "node whose maps to read (default: the hostname)")
	cmd.PersistentFlags().String("pin-dir", "", "BPF pin directory (default "+daemon.DefaultPinRoot+"/<node>)")

	sub := func(use, short string, show func(w io.Writer, p *ebpf.Pinned, v *viper.Viper) error) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				v, err := loadConfig(cmd)
				if err != nil {
					return err
				}
				p, err := ebpf.OpenPinned(dpPinDir(v))
				if err != nil {
					return err
				}
				defer p.Close()
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				if err := show(w, p, v); err != nil {
					return err
				}
				return w.Flush()
			},
		}
	}
	ct := sub("ct", "List conntrack entries", showCT)
	ct.Flags().Int("limit", 1000, "at most this many entries (0: all)")
	cmd.AddCommand(
		sub("services", "List service frontends and their backends", showServices),
		sub("backends", "List backends with their active connection counts", showBackends),
		ct,
		sub("stats", "Show each map's fill and the packet counters", showStats),
		sub("routes", "List local pod endpoints (redirect_peer) and remote podCIDR tunnel routes", showRoutes),
		newDPPolicyCmd(),
		newDPMonitorCmd(),
	)
	return cmd
}

func dpPinDir(v *viper.Viper) string {
	if d := v.GetString("pin-dir"); d != "" {
		return d
	}
	node := v.GetString("node-name")
	if node == "" {
		node, _ = os.Hostname()
	}
	return filepath.Join(daemon.DefaultPinRoot, node)
}

func showServices(w io.Writer, p *ebpf.Pinned, _ *viper.Viper) error {
	svcs, err := p.Services()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "SERVICE ADDRESS\tID\tALGORITHM\tFLAGS\tBACKEND ADDRESS (ID) [STATE, CONNS]")
	for _, s := range svcs {
		var flags []string
		if s.ExternalLocal {
			flags = append(flags, "local")
		}
		if s.AffinityTimeout > 0 {
			flags = append(flags, "affinity="+s.AffinityTimeout.String())
		}
		if len(flags) == 0 {
			flags = append(flags, "-")
		}
		head := fmt.Sprintf("%s\t%d\t%s\t%s", s.ServiceKey, s.ID, s.Algorithm, strings.Join(flags, ","))
		if len(s.Backends) == 0 {
			fmt.Fprintf(w, "%s\t(no backends)\n", head)
			continue
		}
		for i, b := range s.Backends {
			state := "active"
			if i >= s.Active {
				state = "terminating"
			}
			fmt.Fprintf(w, "%s\t%s (%d) [%s, %d]\n", head, b.Addr, b.ID, state, b.Conns)
			head = "\t\t\t"
		}
	}
	return nil
}

func showRoutes(w io.Writer, p *ebpf.Pinned, _ *viper.Viper) error {
	eps, err := p.Endpoints()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "LOCAL POD\tHOST IFINDEX\tHOST MAC\tPOD MAC")
	for _, e := range eps {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", e.IP, e.HostIfindex, e.HostMAC, e.PodMAC)
	}
	routes, err := p.TunnelRoutes()
	if err != nil {
		return err
	}
	prefixes := make([]netip.Prefix, 0, len(routes))
	for pfx := range routes {
		prefixes = append(prefixes, pfx)
	}
	sort.Slice(prefixes, func(i, j int) bool { return prefixes[i].Addr().Less(prefixes[j].Addr()) })
	fmt.Fprintln(w, "\nREMOTE PODCIDR (VXLAN)\tNODE")
	if len(prefixes) == 0 {
		fmt.Fprintln(w, "(none: native routing uses kernel routes, see `ip route` in the node's netns)\t")
	}
	for _, pfx := range prefixes {
		fmt.Fprintf(w, "%s\t%s\n", pfx, routes[pfx])
	}
	return nil
}

func showBackends(w io.Writer, p *ebpf.Pinned, _ *viper.Viper) error {
	bes, err := p.Backends()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "ID\tADDRESS\tPROTO\tSTATE\tCONNS")
	for _, b := range bes {
		state := "active"
		if b.Terminating {
			state = "terminating"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\n", b.ID, b.Addr, b.Proto, state, b.Conns)
	}
	return nil
}

func showCT(w io.Writer, p *ebpf.Pinned, v *viper.Viper) error {
	entries, err := p.Conntrack(v.GetInt("limit"))
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "DIR\tPROTO\tSOURCE\tDESTINATION\tREWRITE\tSVC\tBACKEND\tEXPIRES\tFLAGS")
	for _, e := range entries {
		dir := "fwd"
		if e.Reply {
			dir = "reply"
		}
		var rw []string
		if e.NewSrc.IsValid() {
			rw = append(rw, "src="+e.NewSrc.String())
		}
		if e.NewDst.IsValid() {
			rw = append(rw, "dst="+e.NewDst.String())
		}
		if len(rw) == 0 {
			rw = append(rw, "-")
		}
		flags := "-"
		if e.Closing {
			flags = "closing"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", dir, e.Proto, e.Src, e.Dst,
			strings.Join(rw, ","), e.ServiceID, e.BackendID, e.ExpiresIn.Round(1e9), flags)
	}
	return nil
}

func showStats(w io.Writer, p *ebpf.Pinned, _ *viper.Viper) error {
	stats, err := p.Stats()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "MAP\tTYPE\tENTRIES\tMAX")
	for _, s := range stats {
		n := fmt.Sprint(s.Entries)
		if s.Entries < 0 {
			n = "(array)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", s.Name, s.Type, n, s.MaxEntries)
	}
	counters, err := p.Counters()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(counters))
	for name := range counters {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "\nCOUNTER\tPACKETS\t\t")
	for _, name := range names {
		fmt.Fprintf(w, "%s\t%d\t\t\n", name, counters[name])
	}
	return nil
}
