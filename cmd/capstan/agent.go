package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/kubelet/agent"
	"github.com/capstan-net/capstan/kubelet/logs"
)

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node: join the cluster and run its pods on containerd (the kubelet)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			var ips []net.IP
			for _, s := range v.GetStringSlice("node-ip") {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("--node-ip: %q is not an IP address", s)
				}
				ips = append(ips, ip)
			}
			clusterCIDR, err := netip.ParsePrefix(v.GetString("cluster-cidr"))
			if err != nil {
				return fmt.Errorf("--cluster-cidr: %w", err)
			}
			serviceCIDR, err := netip.ParsePrefix(v.GetString("service-cidr"))
			if err != nil {
				return fmt.Errorf("--service-cidr: %w", err)
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own binary: %w", err)
			}
			self, _ = filepath.EvalSymlinks(self)
			// The small log driver next to this binary starts far faster
			// than capstan itself, once per container; fall back to
			// `capstan logdriver`.
			logDriver := filepath.Join(filepath.Dir(self), "capstan-logdriver")
			if _, err := os.Stat(logDriver); err != nil {
				logDriver = self
			}
			binDirs := v.GetStringSlice("cni-bin-dir")
			// A capstan-cni next to this binary (as `make build` leaves
			// it) is found even when it is not installed.
			binDirs = append(binDirs, filepath.Dir(self))
			var snatAddr netip.Addr
			if s := v.GetString("snat-addr"); s != "" {
				if snatAddr, err = netip.ParseAddr(s); err != nil || !snatAddr.Is4() {
					return fmt.Errorf("--snat-addr %q: want an IPv4 address", s)
				}
			}
			token, err := joinToken(v.GetString("token"), v.GetString("token-file"))
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			return agent.Run(ctx, agent.Config{
				Server:              v.GetString("server"),
				Token:               token,
				CAFile:              v.GetString("ca-file"),
				Insecure:            v.GetBool("insecure-skip-ca-verification"),
				NodeName:            v.GetString("node-name"),
				NodeIPs:             ips,
				DataDir:             v.GetString("data-dir"),
				RunDir:              v.GetString("run-dir"),
				ContainerdSocket:    v.GetString("containerd-socket"),
				ContainerdNamespace: v.GetString("containerd-namespace"),
				CNIConfDir:          v.GetString("cni-conf-dir"),
				CNIBinDirs:          binDirs,
				CgroupParent:        v.GetString("cgroup-parent"),
				Port:                v.GetInt("port"),
				ImportImages:        v.GetStringSlice("import-images"),
				RestartBackoff:      v.GetDuration("restart-backoff"),
				LogDriver:           logDriver,
				Dataplane:           v.GetBool("dataplane"),
				DataplaneConfig: daemon.Config{
					PinDir:           v.GetString("bpf-pin-dir"),
					Devices:          v.GetStringSlice("dataplane-devices"),
					CgroupDir:        v.GetString("dataplane-cgroup"),
					SNATAddr:         snatAddr,
					DefaultAlgorithm: v.GetString("lb-algorithm"),
					MetricsAddr:      v.GetString("dataplane-metrics-addr"),
					Routing:          v.GetString("routing"),
					Mode:             v.GetString("mode"),
					ClusterCIDR:      clusterCIDR,
					ServiceCIDR:      serviceCIDR,
					Masquerade:       v.GetBool("masquerade"),
					ServiceEntries:   v.GetInt("service-entries"),
					BackendEntries:   v.GetInt("backend-entries"),
					Connections:      v.GetInt("connections"),
					PolicyEndpoints:  v.GetInt("policy-endpoints"),
					PolicyRules:      v.GetInt("policy-rules"),
					PolicyPorts:      v.GetInt("policy-ports"),
				},
				Log: log,
			})
		},
	}
	f := cmd.Flags()
	f.String("server", "", "API server URL (https://host:port)")
	f.String("token", "", "join token (the server's data dir has it in join-token); needed only for the first start")
	f.String("token-file", "", "file holding the join token, instead of --token (which any ps listing shows)")
	f.String("ca-file", "", "cluster CA certificate to trust the server with when joining")
	f.Bool("insecure-skip-ca-verification", false, "join without verifying the server's certificate (trust on first use)")
	f.String("node-name", "", "node name (default: the hostname)")
	f.StringSlice("node-ip", nil, "node InternalIP address(es) (default: detected from the default route)")
	f.String("data-dir", "/var/lib/capstan", "state directory; this node's is <data-dir>/nodes/<node>")
	f.String("run-dir", "/run/capstan", "runtime directory; this node's is <run-dir>/<node>")
	f.String("containerd-socket", "/run/capstan/containerd/containerd.sock", "containerd socket")
	f.String("containerd-namespace", "", "containerd namespace for this node's containers (default capstan-<node>)")
	f.String("cni-conf-dir", "/etc/cni/net.d", "where the node's CNI configuration is written and read")
	f.StringSlice("cni-bin-dir", []string{"/opt/cni/bin"}, "directories with CNI plugin binaries")
	f.String("cgroup-parent", "", "cgroup path for pods (default capstan/<node>)")
	f.Int("port", 10250, "port of the agent's HTTPS endpoint (logs, exec, port-forward)")
	f.StringSlice("import-images", nil, "image archives (OCI layout tar) to import into containerd at start-up")
	f.Duration("restart-backoff", 10*time.Second, "first crash-loop back-off; it doubles up to 5m")
	f.Bool("dataplane", true, "run the node's eBPF dataplane (services, NodePort, pod programs) in the agent")
	f.String("bpf-pin-dir", "", "bpf filesystem directory for the dataplane's maps and links (default /sys/fs/bpf/capstan/<node>)")
	f.StringSlice("dataplane-devices", []string{"eth0"}, "node devices that get the NodePort programs")
	f.String("snat-addr", "", "source address for externalIP and load-balancer traffic forwarded to another node's backend (default: the first --node-ip)")
	f.String("dataplane-cgroup", "", "cgroup v2 directory the socket load balancer attaches to (default: the node's own subtree, its pods; /sys/fs/cgroup on a node of its own gives the host's processes ClusterIPs too)")
	f.String("lb-algorithm", "random", "default Service load-balancing algorithm: random, round-robin, least-conn, source-hash")
	f.String("mode", "ebpf", "who implements Services: ebpf, iptables (kube-proxy-style rules, for comparison) or none (an external kube-proxy)")
	f.String("routing", "native", "how pods reach other nodes' pods: native (a route per node) or vxlan")
	f.String("cluster-cidr", "10.244.0.0/16", "the cluster's pod range (masquerade source)")
	f.String("service-cidr", "10.96.0.0/16", "the cluster's Service range (never masqueraded)")
	f.Bool("masquerade", true, "SNAT pod traffic leaving the cluster to the node address, in eBPF")
	f.Int("service-entries", 0, "dataplane map size: service frontends (default 65536)")
	f.Int("backend-entries", 0, "dataplane map size: service backends (default 65536)")
	f.Int("connections", 0, "dataplane map size: tracked connections (default 524288)")
	f.Int("policy-endpoints", 0, "dataplane map size: pods NetworkPolicy isolates (default 4096)")
	f.Int("policy-rules", 0, "dataplane map size: NetworkPolicy peer entries over all pods (default 65536)")
	f.Int("policy-ports", 0, "dataplane map size: NetworkPolicy port entries (default 65536)")
	f.String("dataplane-metrics-addr", "", "serve the dataplane's Prometheus metrics here (host:port)")
	return cmd
}

// newLogDriverCmd is run by containerd's shim for each container, with
// the container's stdout and stderr on fds 3 and 4.
func newLogDriverCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "logdriver FILE",
		Short:  "containerd logging driver writing CRI-format container logs",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return logs.DriverMain(args)
		},
	}
}

// joinToken is the token given directly or read from file; giving both is an error.
func joinToken(token, file string) (string, error) {
	if file == "" {
		return token, nil
	}
	if token != "" {
		return "", errors.New("--token and --token-file: give one")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	t := strings.TrimSpace(string(data))
	if t == "" {
		return "", fmt.Errorf("--token-file %s: empty", file)
	}
	return t, nil
}
