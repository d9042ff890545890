// Package agent assembles a node: its own containerd, the images it needs
// (there is no registry), the upstream kubelet joining with a bootstrap
// token, the eBPF dataplane, and the CNI configuration that lets pods on the
// node once the dataplane is attached. `capstan agent` is a thin wrapper
// around Run.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/client"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/control/addons"
	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/internal/bpffs"
	"github.com/capstan-net/capstan/kubelet"
	"github.com/capstan-net/capstan/kubelet/containerd"
	"github.com/capstan-net/capstan/kubelet/images"
)

// Config is the agent's configuration (flags of `capstan agent`).
type Config struct {
	Server string
	// Token is the join token; needed only until the kubelet has its own
	// credentials.
	Token    string
	CAFile   string
	NodeName string
	// NodeIPs are the node's InternalIPs; empty means detect them.
	NodeIPs []net.IP
	// DataDir holds the node's state under nodes/<node>; RunDir its runtime
	// state (containerd's sockets, pod network namespaces, endpoint records)
	// under <node>.
	DataDir    string
	RunDir     string
	CNIConfDir string
	CNIBinDirs []string
	// CgroupRoot is the cgroup pods run under, default /capstan/<node>.
	CgroupRoot    string
	Port          int
	ImportImages  []string
	ClusterDNS    []string
	ClusterDomain string
	KubeletArgs   []string
	// Binaries: containerd, the directory of its runc shim, and the pause
	// program the sandbox image is made of.
	Containerd, ShimDir, Pause string
	// CoreDNS is the program the cluster DNS image (CoreDNSImage) is made
	// of; the node runs without that image when it is missing.
	CoreDNS string
	// Network is NetworkCapstan (the default: the agent runs the node's
	// dataplane, which writes the CNI configuration) or NetworkNone (no pod
	// network until one is installed on the cluster, as on a kubeadm node
	// before its CNI). DataplaneConfig carries the dataplane's settings
	// (node, client, CNI and endpoint directories are filled in here).
	Network         string
	DataplaneConfig daemon.Config
	Log             *slog.Logger
}

// The values of Config.Network.
const (
	NetworkCapstan = "capstan"
	NetworkNone    = "none"
)

func (c *Config) nodeDir() string { return filepath.Join(c.DataDir, "nodes", c.NodeName) }
func (c *Config) runDir() string  { return filepath.Join(c.RunDir, c.NodeName) }

// ContainerdSocket is where the agent of node runs its containerd.
func ContainerdSocket(runDir, node string) string {
	return filepath.Join(runDir, node, "containerd", "containerd.sock")
}

func (c *Config) setDefaults() error {
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node name: %w", err)
		}
		c.NodeName = h
	}
	if len(c.NodeIPs) == 0 {
		ip, err := DetectNodeIP()
		if err != nil {
			return err
		}
		c.NodeIPs = []net.IP{ip}
	}
	if c.CgroupRoot == "" {
		c.CgroupRoot = "/capstan/" + c.NodeName
	}
	if c.Port == 0 {
		c.Port = 10250
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = "cluster.local"
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	switch c.Network {
	case "":
		c.Network = NetworkCapstan
	case NetworkCapstan, NetworkNone:
	default:
		return fmt.Errorf("network %q: want %s or %s", c.Network, NetworkCapstan, NetworkNone)
	}
	for name, path := range map[string]string{"containerd": c.Containerd, "pause": c.Pause} {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s binary: %w (make build puts it beside capstan)", name, err)
		}
	}
	return nil
}

func (c *Config) kubelet() *kubelet.Config {
	return &kubelet.Config{
		NodeName: c.NodeName, NodeIPs: c.NodeIPs,
		Dir:             filepath.Join(c.nodeDir(), "kubelet"),
		RuntimeEndpoint: "unix://" + ContainerdSocket(c.RunDir, c.NodeName),
		CgroupRoot:      c.CgroupRoot, ClientCAFile: c.CAFile,
		PodLogsDir: filepath.Join(c.nodeDir(), "pod-logs"), Port: c.Port,
		ClusterDNS: c.ClusterDNS, ClusterDomain: c.ClusterDomain, ExtraArgs: c.KubeletArgs,
	}
}

func (c *Config) containerd() *containerd.Config {
	return &containerd.Config{
		Binary: c.Containerd, ShimDir: c.ShimDir,
		Root:       filepath.Join(c.nodeDir(), "containerd"),
		State:      filepath.Dir(ContainerdSocket(c.RunDir, c.NodeName)),
		CNIConfDir: c.CNIConfDir, CNIBinDirs: c.CNIBinDirs,
		LogFile: filepath.Join(c.nodeDir(), "containerd.log"),
		Log:     c.Log.With("component", "containerd"),
	}
}

// Run runs the node until ctx ends (or the process gets SIGTERM, which
// also stops the kubelet). Pods keep running after it returns.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	kc := cfg.kubelet()
	args, err := kc.Args()
	if err != nil {
		return err
	}
	if err := checkLayout(cfg.nodeDir()); err != nil {
		return err
	}
	if err := join(ctx, &cfg, kc); err != nil {
		return err
	}
	if err := writeLayout(cfg.nodeDir()); err != nil {
		return err
	}
	if err := kubelet.PrepareCgroupRoot(cfg.CgroupRoot); err != nil {
		return err
	}
	errc := make(chan error, 3)
	ctrd := cfg.containerd()
	ctrdReady := make(chan struct{}, 1)
	go func() {
		errc <- ctrd.Supervise(ctx, func() {
			select {
			case ctrdReady <- struct{}{}:
			default:
			}
		})
	}()
	select {
	case <-ctrdReady:
	case err := <-errc:
		return err
	case <-time.After(time.Minute):
		return fmt.Errorf("containerd did not start in 1m: see %s", ctrd.LogFile)
	}
	if err := loadImages(ctx, &cfg, ctrd.Socket()); err != nil {
		return err
	}
	if err := kc.WriteConfig(); err != nil {
		return err
	}
	kubeletDone := make(chan error, 1)
	go func() { kubeletDone <- kubelet.Run(ctx, args) }()
	cfg.Log.Info("kubelet started", "node", cfg.NodeName, "ips", cfg.NodeIPs, "containerd", ctrd.Socket())
	rc, err := waitCredentials(ctx, kc, kubeletDone)
	if err != nil {
		return err
	}
	go func() { errc <- network(ctx, &cfg, rc) }()
	select {
	case err := <-kubeletDone:
		return err
	case err := <-errc:
		if err != nil && ctx.Err() == nil {
			return err
		}
		return <-kubeletDone
	}
}

// join makes sure the kubelet can authenticate: with its own certificate
// from an earlier start, or with the join token, checked first so that a
// wrong token or CA is an error now and not a kubelet retrying forever.
func join(ctx context.Context, cfg *Config, kc *kubelet.Config) error {
	if kc.Joined() {
		return nil
	}
	if cfg.Token == "" {
		return errors.New("this node has not joined yet: give the join token (--token-file; the server's <data-dir>/join-token)")
	}
	if cfg.Server == "" || cfg.CAFile == "" {
		return errors.New("joining needs --server and --ca-file (the server's <data-dir>/pki/ca.crt)")
	}
	caPEM, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	j := kubelet.Join{Server: cfg.Server, CAPEM: caPEM, Token: cfg.Token}
	if err := j.Check(ctx, 2*time.Minute); err != nil {
		return err
	}
	return kc.WriteBootstrapKubeconfig(j)
}

// loadImages makes the sandbox and cluster DNS images and imports the
// archives given.
func loadImages(ctx context.Context, cfg *Config, socket string) error {
	c, err := client.New(socket, client.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("connect to containerd: %w", err)
	}
	defer c.Close()
	if err := images.EnsureStatic(ctx, c, containerd.Namespace, images.Sandbox(containerd.SandboxImage, cfg.Pause), cfg.Log); err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	if err := ensureCoreDNS(ctx, cfg, c); err != nil {
		return err
	}
	for _, path := range cfg.ImportImages {
		names, err := images.Import(ctx, c, containerd.Namespace, path, cfg.Log)
		if err != nil {
			return fmt.Errorf("import images: %w", err)
		}
		cfg.Log.Info("imported images", "file", path, "images", names)
	}
	return nil
}

// ensureCoreDNS makes the cluster DNS image, which the server's add-on
// runs under upstream's name. A node without the program still runs every
// other pod, so its absence is logged, not fatal: the DNS pods placed there
// report the image missing.
func ensureCoreDNS(ctx context.Context, cfg *Config, c *client.Client) error {
	if cfg.CoreDNS == "" {
		return nil
	}
	if _, err := os.Stat(cfg.CoreDNS); errors.Is(err, os.ErrNotExist) {
		cfg.Log.Warn("no coredns beside capstan: cluster DNS pods cannot start on this node (make build puts it there)", "path", cfg.CoreDNS)
		return nil
	}
	if err := images.EnsureStatic(ctx, c, containerd.Namespace, images.CoreDNS(addons.CoreDNSImage, cfg.CoreDNS), cfg.Log); err != nil {
		return fmt.Errorf("cluster DNS image: %w", err)
	}
	return nil
}

// waitCredentials waits for the kubelet's TLS bootstrap and returns a client
// config with the node's own identity (system:node:<name>), which the
// dataplane uses too.
func waitCredentials(ctx context.Context, kc *kubelet.Config, kubeletDone <-chan error) (*rest.Config, error) {
	for !kc.Joined() {
		select {
		case err := <-kubeletDone:
			return nil, fmt.Errorf("kubelet stopped before joining: %w", err)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kc.Kubeconfig())
	if err != nil {
		return nil, fmt.Errorf("kubelet kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 50, 100
	return rc, nil
}

// network runs the dataplane, which writes the CNI configuration once it
// is attached and the node has its pod CIDRs; with Network "none" the node
// waits for a network installed on the cluster (a DaemonSet) instead.
func network(ctx context.Context, cfg *Config, rc *rest.Config) error {
	if cfg.Network == NetworkNone {
		cfg.Log.Info("no pod network: the node turns Ready once one is installed (helm install capstan)")
		<-ctx.Done()
		return nil
	}
	dc, err := dataplaneConfig(cfg, rc)
	if err != nil {
		return err
	}
	if err := daemon.Run(ctx, dc); err != nil && ctx.Err() == nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	return nil
}

func dataplaneConfig(cfg *Config, rc *rest.Config) (daemon.Config, error) {
	dc := cfg.DataplaneConfig
	dc.NodeName, dc.RestConfig, dc.Logger = cfg.NodeName, rc, cfg.Log.With("component", "dataplane")
	dc.EndpointsDir = filepath.Join(cfg.runDir(), "endpoints")
	dc.CNI.ConfDir, dc.CNI.IPAMDir = cfg.CNIConfDir, filepath.Join(cfg.nodeDir(), "ipam")
	if hasPortmap(cfg) {
		dc.CNI.Portmap = "portmap"
	}
	if dc.PinDir == "" {
		// The daemon's default pin dir is there.
		if err := bpffs.Ensure(bpffs.Root); err != nil {
			return dc, err
		}
	}
	if dc.CgroupDir == "" {
		dir, err := NodeCgroupDir(cfg.CgroupRoot)
		if err != nil {
			return dc, err
		}
		dc.CgroupDir = dir
	}
	if len(dc.NodeAddrs) == 0 {
		for _, ip := range cfg.NodeIPs {
			if a, ok := netip.AddrFromSlice(ip.To4()); ok {
				dc.NodeAddrs = append(dc.NodeAddrs, a)
			}
		}
	}
	return dc, nil
}

// hasPortmap reports whether a CNI bin dir holds the portmap plugin: a node
// without it still runs pods, but none with a hostPort, and says so.
func hasPortmap(cfg *Config) bool {
	for _, d := range cfg.CNIBinDirs {
		if _, err := os.Stat(filepath.Join(d, "portmap")); err == nil {
			return true
		}
	}
	cfg.Log.Warn("no portmap CNI plugin in the CNI bin dirs: pods' hostPorts are not served (make build puts it beside capstan)", "dirs", cfg.CNIBinDirs)
	return false
}
