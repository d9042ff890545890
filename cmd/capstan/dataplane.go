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

	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/dataplane/ebpf"
)

func newDataplaneCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dataplane",
		Short: "Run the eBPF service dataplane on this node (kube-proxy replacement)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			cfg := daemon.Config{
				Kubeconfig:       v.GetString("kubeconfig"),
				NodeName:         v.GetString("node-name"),
				PinDir:           v.GetString("pin-dir"),
				CgroupDir:        v.GetString("cgroup"),
				Devices:          v.GetStringSlice("devices"),
				Netns:            v.GetString("netns"),
				DefaultAlgorithm: v.GetString("default-algorithm"),
				MaglevSeed:       v.GetUint32("maglev-seed"),
				MinSyncInterval:  v.GetDuration("min-sync-interval"),
				SyncPeriod:       v.GetDuration("sync-period"),
				MetricsAddr:      v.GetString("metrics-addr"),
				HealthzAddr:      v.GetString("healthz-addr"),
				Routing:          v.GetString("routing"),
				Mode:             v.GetString("mode"),
				EndpointsDir:     v.GetString("endpoints-dir"),
				ServiceEntries:   v.GetInt("service-entries"),
				BackendEntries:   v.GetInt("backend-entries"),
				Connections:      v.GetInt("connections"),
				PolicyEndpoints:  v.GetInt("policy-endpoints"),
				PolicyRules:      v.GetInt("policy-rules"),
				PolicyPorts:      v.GetInt("policy-ports"),
				Masquerade:       v.GetString("cluster-cidr") != "" && v.GetBool("masquerade"),
				Logger:           log,
			}
			for flag, dst := range map[string]*netip.Prefix{"cluster-cidr": &cfg.ClusterCIDR, "service-cidr": &cfg.ServiceCIDR} {
				if s := v.GetString(flag); s != "" {
					if *dst, err = netip.ParsePrefix(s); err != nil {
						return fmt.Errorf("--%s: %w", flag, err)
					}
				}
			}
			if cfg.Kubeconfig == "" {
				cfg.Kubeconfig = defaultKubeconfig()
			}
			if cfg.NodeName == "" {
				if cfg.NodeName, err = os.Hostname(); err != nil {
					return fmt.Errorf("--node-name: %w", err)
				}
			}
			for _, s := range v.GetStringSlice("node-addrs") {
				a, err := netip.ParseAddr(s)
				if err != nil {
					return fmt.Errorf("--node-addrs: %w", err)
				}
				cfg.NodeAddrs = append(cfg.NodeAddrs, a)
			}
			if s := v.GetString("snat-addr"); s != "" {
				if cfg.SNATAddr, err = netip.ParseAddr(s); err != nil {
					return fmt.Errorf("--snat-addr: %w", err)
				}
			}
			ctx, cancel := signalContext()
			defer cancel()
			return daemon.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.String("kubeconfig", "", "kubeconfig of the cluster (default: the local cluster's)")
	f.String("node-name", "", "this node's name (default: the hostname)")
	f.String("pin-dir", "", "BPF pin directory on a bpffs (default "+daemon.DefaultPinRoot+"/<node>)")
	f.String("cgroup", "", "cgroup v2 directory to attach the socket load balancer to (the node's subtree)")
	f.StringSlice("devices", nil, "node devices for the tc NodePort programs")
	f.String("netns", "", "network namespace path the devices are in (default: the daemon's)")
	f.StringSlice("node-addrs", nil, "addresses NodePorts answer on (default: the Node object's)")
	f.String("default-algorithm", "random", "load-balancing algorithm without an lb.capstan.io/algorithm annotation")
	f.Uint32("maglev-seed", 0, "source-hash seed; the same on every node of a cluster")
	f.String("snat-addr", "", "source address for service traffic arriving on node devices")
	f.Duration("min-sync-interval", 0, "least time between syncs (default 250ms in eBPF mode, 1s in iptables and none modes)")
	f.Duration("sync-period", 0, "full resync period (default 30s)")
	f.String("metrics-addr", "", "address to serve Prometheus /metrics and kube-proxy's /proxyMode on, e.g. 127.0.0.1:10249")
	f.String("healthz-addr", "", "address to serve kube-proxy's /healthz and /livez on, e.g. 0.0.0.0:10256")
	f.Int("service-entries", 0, "map size: service frontends (default 65536)")
	f.Int("backend-entries", 0, "map size: service backends (default 65536)")
	f.Int("connections", 0, "map size: tracked connections (default 524288)")
	f.Int("policy-endpoints", 0, "map size: pods NetworkPolicy isolates (default 4096)")
	f.Int("policy-rules", 0, "map size: NetworkPolicy peer entries over all pods (default 65536)")
	f.Int("policy-ports", 0, "map size: NetworkPolicy port entries (default 65536)")
	f.String("mode", "ebpf", "who implements Services: ebpf, iptables (kube-proxy-style rules) or none (an external kube-proxy)")
	f.String("routing", "", "pod routing between nodes: native or vxlan (default: leave it to the CNI in use)")
	f.String("endpoints-dir", "", "capstan-cni endpoint records, whose pod veths get the pod programs")
	f.String("cluster-cidr", "", "the cluster's pod range; with --masquerade, pod traffic leaving it is SNATed")
	f.String("service-cidr", "", "the Service range, never masqueraded")
	f.Bool("masquerade", true, "masquerade pod traffic leaving the cluster (needs --cluster-cidr)")
	return cmd
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
