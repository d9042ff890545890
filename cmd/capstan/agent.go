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
	f.String("network", agent.NetworkCapstan, "the node's pod network: capstan (the agent runs the eBPF dataplane and writes the CNI configuration) or none (nodes stay NotReady until a network is installed on the cluster, e.g. Capstan's Helm chart)")
	addDataplaneFlags(f)
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
	dc, err := dataplaneConfig(v)
	if err != nil {
		return agent.Config{}, err
	}
	// Empty: the agent's pods' cgroup (agent.Run finds it).
	if rel := v.GetString("socket-lb-cgroup"); rel != "" {
		if dc.CgroupDir, err = cgroupDir(v.GetString("cgroup-mount"), rel); err != nil {
			return agent.Config{}, err
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
	cniBins := v.GetStringSlice("cni-bin-dir")
	if v.GetString("network") != agent.NetworkNone {
		// capstan-cni beside this binary (as make build leaves it) is found even when not installed.
		cniBins = append(cniBins, bins.dir)
	}
	return agent.Config{
		Server: v.GetString("server"), Token: token, CAFile: v.GetString("ca-file"),
		NodeName: v.GetString("node-name"), NodeIPs: ips,
		DataDir: v.GetString("data-dir"), RunDir: v.GetString("run-dir"),
		CNIConfDir:    v.GetString("cni-conf-dir"),
		CNIBinDirs:    cniBins,
		CgroupRoot:    v.GetString("cgroup-root"),
		Port:          v.GetInt("port"),
		ImportImages:  v.GetStringSlice("import-images"),
		ClusterDNS:    dns,
		ClusterDomain: v.GetString("cluster-domain"),
		KubeletArgs:   v.GetStringSlice("kubelet-arg"),
		Containerd:    bins.containerd, ShimDir: bins.dir, Pause: bins.pause, CoreDNS: bins.coredns,
		Network:         v.GetString("network"),
		DataplaneConfig: dc,
		Log:             log,
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
