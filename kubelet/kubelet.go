// Package kubelet configures and runs the upstream kubelet in-process, at
// the Kubernetes version this module pins: its KubeletConfiguration file,
// its command line, the bootstrap kubeconfig it joins with and the cgroup
// root it runs pods under. Several kubelets may share a machine (one per
// `capstan up` node): each has its own directory, cgroup root, containerd
// and network namespace.
package kubelet

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
	"k8s.io/kubernetes/cmd/kubelet/app/options"

	"github.com/capstan-net/capstan/control/components"
)

// Config describes one node's kubelet.
type Config struct {
	NodeName string
	NodeIPs  []net.IP
	// Dir is the kubelet's root directory (pods, volumes, plugins); its
	// configuration, kubeconfigs and certificates live there too.
	Dir string
	// RuntimeEndpoint is the CRI socket, unix:///...
	RuntimeEndpoint string
	// CgroupRoot is where pods' cgroups go, e.g. /capstan/node-1.
	CgroupRoot string
	// ClientCAFile verifies clients of the kubelet's API (the API server).
	ClientCAFile string
	PodLogsDir   string
	Port         int
	// ClusterDNS and ClusterDomain are what pods' resolv.conf points at.
	ClusterDNS    []string
	ClusterDomain string
	// ResolvConf is the file pods with dnsPolicy Default copy (and the
	// upstream of cluster DNS); empty uses /etc/resolv.conf.
	ResolvConf string
	// ExtraArgs are "name=value" kubelet flags over Capstan's.
	ExtraArgs []string
}

// ConfigFile is the KubeletConfiguration the kubelet reads.
func (c *Config) ConfigFile() string { return filepath.Join(c.Dir, "config.yaml") }

// Kubeconfig is where the kubelet keeps its own credentials once joined.
func (c *Config) Kubeconfig() string { return filepath.Join(c.Dir, "kubelet.kubeconfig") }

// BootstrapKubeconfig holds the join token the kubelet asks for them with.
func (c *Config) BootstrapKubeconfig() string { return filepath.Join(c.Dir, "bootstrap.kubeconfig") }

// CertDir holds the kubelet's client and serving certificates.
func (c *Config) CertDir() string { return filepath.Join(c.Dir, "pki") }

// Args is the kubelet's command line: Capstan's flags with ExtraArgs over them.
func (c *Config) Args() ([]string, error) {
	ips := make([]string, 0, len(c.NodeIPs))
	for _, ip := range c.NodeIPs {
		ips = append(ips, ip.String())
	}
	base := components.Args{
		"config":               c.ConfigFile(),
		"kubeconfig":           c.Kubeconfig(),
		"bootstrap-kubeconfig": c.BootstrapKubeconfig(),
		"cert-dir":             c.CertDir(),
		"root-dir":             c.Dir,
		"hostname-override":    c.NodeName,
		"node-ip":              strings.Join(ips, ","),
	}
	over, err := ParseArgs(c.ExtraArgs)
	if err != nil {
		return nil, err
	}
	return components.Merge(base, over), nil
}

// ParseArgs reads "name=value" entries of --kubelet-arg and checks each name
// against the kubelet's flags.
func ParseArgs(entries []string) (components.Args, error) {
	fs := flags()
	out := components.Args{}
	for _, e := range entries {
		name, value, ok := strings.Cut(strings.TrimPrefix(e, "--"), "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--kubelet-arg %q: want name=value", e)
		}
		if fs.Lookup(name) == nil {
			return nil, fmt.Errorf("--kubelet-arg %q: the kubelet has no flag --%s", e, name)
		}
		out[name] = value
	}
	return out, nil
}

// flags is the kubelet's flag set, for checking names.
func flags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("kubelet", pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	options.NewKubeletFlags().AddFlags(fs)
	if cfg, err := options.NewKubeletConfiguration(); err == nil {
		options.AddKubeletConfigFlags(fs, cfg)
	}
	options.AddGlobalFlags(fs)
	return fs
}

// Run runs the kubelet with args until the process gets SIGTERM or SIGINT:
// the upstream command ends on those signals itself (ctx only carries the
// logger), so a process runs at most one kubelet.
func Run(ctx context.Context, args []string) error {
	cmd := kubeletapp.NewKubeletCommand(ctx)
	cmd.SetArgs(args)
	cmd.SilenceErrors = true
	if err := cmd.Execute(); err != nil {
		return fmt.Errorf("kubelet: %w", err)
	}
	return nil
}
