package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/dataplane/proxyhealth"
	"github.com/capstan-net/capstan/kubelet/agent"
	"github.com/capstan-net/capstan/kubelet/images"
)

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node: its containerd, the upstream kubelet and the eBPF dataplane",
		Long: `Run a node: its own containerd, the upstream kubelet (joining the cluster with the
server's join token and kubelet TLS bootstrapping) and Capstan's eBPF dataplane, which
writes the node's CNI configuration once its programs are attached.

Any kubelet flag can be set with --kubelet-arg name=value (repeatable).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			cfg, err := agentConfig(v, log)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			return agent.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.String("server", "", "API server URL (https://host:port)")
	f.String("token", "", "join token (the server's <data-dir>/join-token); needed only for the first start")
	f.String("token-file", "", "file holding the join token, instead of --token (which any ps listing shows)")
	f.String("ca-file", "", "cluster CA certificate (the server's <data-dir>/pki/ca.crt): the server must present a certificate it signed")
	f.String("node-name", "", "node name (default: the hostname)")
	f.StringSlice("node-ip", nil, "node InternalIP address(es) (default: detected from the default route)")
	f.String("data-dir", "/var/lib/capstan", "state directory; this node's is <data-dir>/nodes/<node>")
	f.String("run-dir", "/run/capstan", "runtime directory; this node's is <run-dir>/<node> (containerd's socket, pod network namespaces)")
	f.String("cni-conf-dir", "/etc/cni/net.d", "where the node's CNI configuration is written (containerd reads it there)")
	f.StringSlice("cni-bin-dir", []string{"/opt/cni/bin"}, "directories with CNI plugin binaries (capstan-cni beside capstan is always found)")
	f.String("cgroup-root", "", "cgroup the kubelet runs pods under (default /capstan/<node>)")
	f.Int("port", 10250, "kubelet API port (logs, exec, attach, port-forward)")
	f.StringSlice("import-images", nil, "image archives (OCI layout tar) to import into the node's containerd at start-up")
	f.StringSlice("cluster-dns", []string{"10.96.0.10"}, "cluster DNS server addresses written into pods' resolv.conf (the server's --cluster-dns)")
	f.String("cluster-domain", "cluster.local", "cluster DNS domain")
	f.StringArray("kubelet-arg", nil, "kubelet flag as name=value (repeatable); overrides Capstan's default")
	f.Bool("dataplane", true, "run the node's eBPF dataplane (services, NodePort, pod programs, NetworkPolicy) in the agent")
	f.String("bpf-pin-dir", "", "bpf filesystem directory for the dataplane's maps and links (default /sys/fs/bpf/capstan/<node>)")
	f.StringSlice("dataplane-devices", []string{"eth0"}, "node devices that get the NodePort programs")
	f.String("snat-addr", "", "source address for externalIP and load-balancer traffic forwarded to another node's backend (default: the first --node-ip)")
	f.String("dataplane-cgroup", "", "cgroup v2 directory the socket load balancer attaches to (default: the node's cgroup root, its pods; /sys/fs/cgroup on a node of its own gives the host's processes ClusterIPs too)")
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
	f.String("dataplane-metrics-addr", proxyhealth.StatusAddr, "serve the dataplane's Prometheus /metrics and kube-proxy's /proxyMode here (host:port; empty: not at all; in mode none kube-proxy keeps its default)")
	f.String("proxy-healthz-addr", proxyhealth.HealthzAddr, "serve kube-proxy's /healthz and /livez here, in the node's network namespace (host:port; empty: not at all; in mode none kube-proxy keeps its default)")
	return cmd
}

// agentConfig turns the flags into the agent's configuration.
func agentConfig(v *viper.Viper, log *slog.Logger) (agent.Config, error) {
	var ips []net.IP
	for _, s := range v.GetStringSlice("node-ip") {
		ip := net.ParseIP(s)
		if ip == nil {
			return agent.Config{}, fmt.Errorf("--node-ip: %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	clusterCIDR, err := netip.ParsePrefix(v.GetString("cluster-cidr"))
	if err != nil {
		return agent.Config{}, fmt.Errorf("--cluster-cidr: %w", err)
	}
	serviceCIDR, err := netip.ParsePrefix(v.GetString("service-cidr"))
	if err != nil {
		return agent.Config{}, fmt.Errorf("--service-cidr: %w", err)
	}
	var snatAddr netip.Addr
	if s := v.GetString("snat-addr"); s != "" {
		if snatAddr, err = netip.ParseAddr(s); err != nil || !snatAddr.Is4() {
			return agent.Config{}, fmt.Errorf("--snat-addr %q: want an IPv4 address", s)
		}
	}
	dns := v.GetStringSlice("cluster-dns")
	for _, s := range dns {
		if _, err := netip.ParseAddr(s); err != nil {
			return agent.Config{}, fmt.Errorf("--cluster-dns: %q is not an IP address", s)
		}
	}
	token, err := joinToken(v.GetString("token"), v.GetString("token-file"))
	if err != nil {
		return agent.Config{}, err
	}
	bins, err := beside()
	if err != nil {
		return agent.Config{}, err
	}
	return agent.Config{
		Server: v.GetString("server"), Token: token, CAFile: v.GetString("ca-file"),
		NodeName: v.GetString("node-name"), NodeIPs: ips,
		DataDir: v.GetString("data-dir"), RunDir: v.GetString("run-dir"),
		CNIConfDir: v.GetString("cni-conf-dir"),
		// capstan-cni beside this binary (as make build leaves it) is found even when not installed.
		CNIBinDirs:    append(v.GetStringSlice("cni-bin-dir"), bins.dir),
		CgroupRoot:    v.GetString("cgroup-root"),
		Port:          v.GetInt("port"),
		ImportImages:  v.GetStringSlice("import-images"),
		ClusterDNS:    dns,
		ClusterDomain: v.GetString("cluster-domain"),
		KubeletArgs:   v.GetStringSlice("kubelet-arg"),
		Containerd:    bins.containerd, ShimDir: bins.dir, Pause: bins.pause, CoreDNS: bins.coredns,
		Dataplane: v.GetBool("dataplane"),
		DataplaneConfig: daemon.Config{
			PinDir:           v.GetString("bpf-pin-dir"),
			Devices:          v.GetStringSlice("dataplane-devices"),
			CgroupDir:        v.GetString("dataplane-cgroup"),
			SNATAddr:         snatAddr,
			DefaultAlgorithm: v.GetString("lb-algorithm"),
			MetricsAddr:      v.GetString("dataplane-metrics-addr"),
			HealthzAddr:      v.GetString("proxy-healthz-addr"),
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
	}, nil
}

// binaries are the programs a node runs beside capstan: make build (and
// the image) puts them in one directory.
type binaries struct{ dir, containerd, pause, coredns string }

func beside() (binaries, error) {
	self, err := os.Executable()
	if err != nil {
		return binaries{}, fmt.Errorf("find own binary: %w", err)
	}
	self, _ = filepath.EvalSymlinks(self)
	dir := filepath.Dir(self)
	b := binaries{dir: dir, containerd: filepath.Join(dir, "containerd"),
		pause: filepath.Join(dir, images.PauseName), coredns: filepath.Join(dir, images.CoreDNSName)}
	if _, err := os.Stat(b.containerd); err != nil {
		if p, lerr := exec.LookPath("containerd"); lerr == nil {
			b.containerd = p
		}
	}
	return b, nil
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
