// Package agent assembles a node: it joins the cluster, connects to
// containerd, imports the node's images, and runs the kubelet and its
// HTTPS endpoint. `capstan agent` is a thin wrapper around Run.
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/kubectl/pkg/scheme"

	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/internal/cgroup2"
	"github.com/capstan-net/capstan/kubelet"
	"github.com/capstan-net/capstan/kubelet/bootstrap"
	"github.com/capstan-net/capstan/kubelet/container"
	"github.com/capstan-net/capstan/kubelet/images"
	"github.com/capstan-net/capstan/kubelet/logs"
	"github.com/capstan-net/capstan/kubelet/server"
)

// Config is the agent's configuration (flags of `capstan agent`).
type Config struct {
	Server   string
	Token    string
	CAFile   string
	Insecure bool
	NodeName string
	// NodeIPs are the node's InternalIPs; empty means detect them.
	NodeIPs []net.IP
	// DataDir holds credentials, pods, logs and IPAM state under
	// nodes/<node>; RunDir holds netns pins and endpoint records.
	DataDir string
	RunDir  string

	ContainerdSocket    string
	ContainerdNamespace string // default capstan-<node>
	CNIConfDir          string
	CNIBinDirs          []string
	CgroupParent        string // default capstan/<node>
	Port                int
	ImportImages        []string
	RestartBackoff      time.Duration
	// Dataplane runs the node's eBPF dataplane (services, pod programs) in
	// the agent; DataplaneConfig carries its settings (node, client and
	// endpoints directory are filled in here).
	Dataplane       bool
	DataplaneConfig daemon.Config
	// LogDriver is the absolute path of the capstan binary, run by the
	// containerd shim as `capstan logdriver <file>`.
	LogDriver string
	Log       *slog.Logger
}

// Run runs the node until ctx ends. Pods keep running after it returns.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if cfg.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node name: %w", err)
		}
		cfg.NodeName = h
	}
	if len(cfg.NodeIPs) == 0 {
		ip, err := DetectNodeIP()
		if err != nil {
			return err
		}
		cfg.NodeIPs = []net.IP{ip}
	}
	if cfg.ContainerdNamespace == "" {
		cfg.ContainerdNamespace = "capstan-" + cfg.NodeName
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = filepath.Join("capstan", cfg.NodeName)
	}
	if cfg.Port == 0 {
		cfg.Port = 10250
	}
	nodeDir := filepath.Join(cfg.DataDir, "nodes", cfg.NodeName)
	runDir := filepath.Join(cfg.RunDir, cfg.NodeName)

	// A server that is still starting refuses connections: keep trying
	// for a while (an agent and its server are often started together).
	var (
		creds *bootstrap.Credentials
		err   error
	)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		creds, err = bootstrap.Join(ctx, bootstrap.Options{
			Server: cfg.Server, Token: cfg.Token, CAFile: cfg.CAFile, Insecure: cfg.Insecure,
			NodeName: cfg.NodeName, Addrs: cfg.NodeIPs, Dir: filepath.Join(nodeDir, "pki"),
		})
		var opErr *net.OpError
		if err == nil || !errors.As(err, &opErr) || time.Now().After(deadline) {
			break
		}
		log.Info("server not reachable yet; retrying join", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", creds.Kubeconfig)
	if err != nil {
		return fmt.Errorf("node kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "capstan-agent/" + cfg.NodeName
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}

	ctrd, err := client.New(cfg.ContainerdSocket, client.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", cfg.ContainerdSocket, err)
	}
	defer ctrd.Close()
	ver, err := ctrd.Version(ctx)
	if err != nil {
		return fmt.Errorf("containerd at %s: %w", cfg.ContainerdSocket, err)
	}
	for _, path := range cfg.ImportImages {
		names, err := images.Import(ctx, ctrd, cfg.ContainerdNamespace, path, log)
		if err != nil {
			return fmt.Errorf("import images: %w", err)
		}
		log.Info("imported images", "file", path, "images", names)
	}

	var kl *kubelet.Kubelet
	rt := container.New(container.Config{
		Client:    ctrd,
		Namespace: cfg.ContainerdNamespace,
		LogIO: func(path string) cio.Creator {
			if cfg.LogDriver == "" {
				return cio.NullIO
			}
			return logs.IOCreator(cfg.LogDriver, "logdriver", path)
		},
		OnExit: func(info container.Info) {
			if kl != nil {
				kl.KickPodUID(info.PodUID)
			}
		},
		Log: log,
	})

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: cfg.NodeName})

	kl = kubelet.New(kubelet.Config{
		NodeName: cfg.NodeName,
		NodeIPs:  cfg.NodeIPs,
		Client:   cs,
		Runtime:  rt,
		Network: &kubelet.CNINetwork{
			ConfDir: cfg.CNIConfDir, BinDirs: cfg.CNIBinDirs, CacheDir: filepath.Join(runDir, "cni-cache"),
		},
		NodeDir:        nodeDir,
		LogDir:         filepath.Join(nodeDir, "logs"),
		NetnsDir:       filepath.Join(runDir, "netns"),
		CgroupParent:   cfg.CgroupParent,
		KubeletPort:    cfg.Port,
		RestartBackoff: cfg.RestartBackoff,
		RuntimeVersion: "containerd://" + ver.Version,
		CNIConfDir:     cfg.CNIConfDir,
		IPAMDir:        filepath.Join(nodeDir, "ipam"),
		EndpointsDir:   filepath.Join(runDir, "endpoints"),
		MTU:            1500,
		Recorder:       recorder,
		Log:            log,
	})

	cert, err := tls.LoadX509KeyPair(creds.ServingCert, creds.ServingKey)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(creds.CAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	srv := server.New(server.Config{Cert: cert, ClientCAs: pool, Pods: kl.Streaming(), Log: log})
	addr := net.JoinHostPort(cfg.NodeIPs[0].String(), strconv.Itoa(cfg.Port))
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Run(ctx, addr) }()
	log.Info("agent running", "node", cfg.NodeName, "ips", cfg.NodeIPs, "endpoint", addr, "containerd", ver.Version)

	dpErr := make(chan error, 1)
	if cfg.Dataplane {
		dc := cfg.DataplaneConfig
		dc.NodeName, dc.RestConfig, dc.Logger = cfg.NodeName, rc, log.With("component", "dataplane")
		dc.EndpointsDir = filepath.Join(runDir, "endpoints")
		if dc.PinDir == "" {
			if err := EnsureBPFFS(DefaultBPFRoot); err != nil {
				return err
			}
			dc.PinDir = filepath.Join(DefaultBPFRoot, "capstan", cfg.NodeName)
		}
		if dc.CgroupDir == "" {
			dir, err := NodeCgroupDir(cfg.CgroupParent)
			if err != nil {
				return err
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
		go func() { dpErr <- daemon.Run(ctx, dc) }()
	}

	kerr := make(chan error, 1)
	go func() { kerr <- kl.Run(ctx) }()
	select {
	case err := <-dpErr:
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("dataplane: %w", err)
		}
		return <-kerr
	case err := <-kerr:
		return err
	case err := <-srvErr:
		if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
			return fmt.Errorf("agent endpoint %s: %w", addr, err)
		}
		return <-kerr
	}
}

// podMTU leaves room for the VXLAN header (50 bytes) when pods' traffic
// to other nodes is encapsulated.
func podMTU(cfg Config) int {
	if cfg.Dataplane && cfg.DataplaneConfig.Routing == daemon.RoutingVXLAN {
		return 1450
	}
	return 1500
}

// DefaultBPFRoot is where the bpf filesystem is normally mounted.
const DefaultBPFRoot = "/sys/fs/bpf"

// EnsureBPFFS mounts a bpf filesystem at dir unless one is there, as
// Cilium's agent does, so pinned maps and links outlive the agent.
func EnsureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bpffs dir: %w", err)
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}

// NodeCgroupDir is the node's cgroup v2 directory (where pods' cgroups
// are made, and the socket load balancer attaches), created if missing:
// under the cgroup2 mount, whether that is /sys/fs/cgroup or the unified
// hierarchy of a hybrid host.
func NodeCgroupDir(parent string) (string, error) {
	root, err := cgroup2.Root()
	if err != nil {
		return "", fmt.Errorf("agent: %w; the socket load balancer needs one", err)
	}
	dir := filepath.Join(root, parent)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("node cgroup: %w", err)
	}
	return dir, nil
}

// DetectNodeIP picks the node's address: the source address of the
// default route, else the first global IPv4 address of an up interface.
func DetectNodeIP() (net.IP, error) {
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if r.Src != nil {
				return r.Src, nil
			}
			if link, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				if addrs, err := netlink.AddrList(link, netlink.FAMILY_V4); err == nil && len(addrs) > 0 {
					return addrs[0].IP, nil
				}
			}
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP, nil
			}
		}
	}
	return nil, errors.New("agent: cannot find the node's IP address; set --node-ip")
}
