package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/internal/atomicfile"
	"github.com/capstan-net/capstan/internal/bpffs"
)

// Up creates what is missing, starts what is not running and waits until
// every node is Ready. A process that exits on the way fails Up with the
// last lines of its log.
func Up(ctx context.Context, cfg Config) (*State, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.Binary == "" {
		return nil, errors.New("cluster: the capstan binary path is required")
	}
	if err := os.MkdirAll(filepath.Join(cfg.dir(), "logs"), 0o755); err != nil {
		return nil, err
	}
	st, err := cfg.plan()
	if err != nil {
		return nil, err
	}
	if err := cfg.underlay(); err != nil {
		return nil, err
	}
	if err := cfg.startServer(ctx); err != nil {
		return nil, err
	}
	for i, node := range st.Nodes {
		if err := cfg.startAgent(i, node); err != nil {
			return nil, err
		}
	}
	if cfg.KubeProxy != "" {
		if err := cfg.startKubeProxies(ctx, st.Nodes); err != nil {
			return nil, err
		}
	}
	if err := cfg.waitReady(ctx, st.Nodes); err != nil {
		return nil, err
	}
	return st, cfg.routePodCIDRs(ctx, st.Nodes)
}

// plan works out the cluster's state, records the host's (once, for every
// cluster), checks that a resume keeps what the cluster
// was made with, and records it.
func (cfg *Config) plan() (*State, error) {
	st := &State{Name: cfg.Name, Routing: cfg.Routing, Mode: cfg.Mode, Subnet: cfg.Subnet.String(), Port: cfg.Port, Server: cfg.serverURL()}
	old, oldErr := readState(cfg.stateFile())
	if oldErr == nil {
		if err := cfg.checkResume(old); err != nil {
			return nil, err
		}
	}
	if err := recordHost(); err != nil {
		return nil, err
	}
	if err := bpffs.Ensure(bpffs.Root); err != nil {
		return nil, err
	}
	// A network installed on the cluster mounts bpffs from a pod, which
	// needs the mount shared, as on a systemd host.
	if err := bpffs.Share(bpffs.Root); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.Nodes; i++ {
		st.Nodes = append(st.Nodes, cfg.nodeName(i))
	}
	return st, writeState(cfg.stateFile(), st)
}

// checkResume refuses changes a running cluster cannot take.
func (cfg *Config) checkResume(old *State) error {
	if len(old.Nodes) > 0 && old.Routing != cfg.Routing {
		return fmt.Errorf("cluster %s runs with --routing %s; run capstan down first to change it", cfg.Name, old.Routing)
	}
	// A node switches modes by restarting its agent, which cleans up the
	// other mode's programs or rules; a running agent would keep the old one.
	if old.Mode != "" && old.Mode != cfg.Mode {
		for _, n := range old.Nodes {
			if cfg.running(n) != 0 {
				return fmt.Errorf("cluster %s runs in --mode %s and node %s is up; run capstan down (or stop its agents) to change it", cfg.Name, old.Mode, n)
			}
		}
	}
	return nil
}

// underlay makes the bridge (the host on .1, no route to pod CIDRs) and the
// outside client's namespace.
func (cfg *Config) underlay() error {
	if !linkExists(cfg.bridge()) {
		if err := run("ip", "link", "add", cfg.bridge(), "type", "bridge"); err != nil {
			return err
		}
	}
	run("ip", "addr", "replace", cfg.hostIP()+"/24", "dev", cfg.bridge())
	if err := run("ip", "link", "set", cfg.bridge(), "up"); err != nil {
		return err
	}
	return cfg.netnsOnBridge(cfg.outsideNetns(), cfg.outsideVeth(), cfg.host(250))
}

func (cfg *Config) netnsOnBridge(ns, veth, ip string) error {
	if !netnsExists(ns) {
		if err := run("ip", "netns", "add", ns); err != nil {
			return err
		}
	}
	if !linkExists(veth) {
		if err := run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
			return err
		}
	}
	for _, args := range [][]string{
		{"ip", "link", "set", veth, "master", cfg.bridge(), "up"},
		{"ip", "-n", ns, "addr", "replace", ip + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
	} {
		if err := run(args...); err != nil {
			return err
		}
	}
	return nil
}

// startServer runs the control plane in a namespace of its own on the
// underlay, as a server machine of a real cluster: the API server dials pod
// IPs (proxy, webhooks, aggregated APIs) through routes that exist only
// there, and several clusters can share the host.
func (cfg *Config) startServer(ctx context.Context) error {
	ns := cfg.serverNetns()
	if err := cfg.netnsOnBridge(ns, cfg.serverVeth(), cfg.serverIP()); err != nil {
		return err
	}
	ip := cfg.serverIP()
	args := append([]string{"nsenter", "--net=/run/netns/" + ns, cfg.Binary, "server", "--data-dir", cfg.serverDir(),
		"--bind-address", ip, "--advertise-address", ip, "--secure-port", fmt.Sprint(cfg.Port),
		"--kube-controller-manager-arg", "bind-address=" + ip, "--kube-scheduler-arg", "bind-address=" + ip,
		// Webhooks and aggregated APIs are dialled at an endpoint's pod IP,
		// not the ClusterIP: the server is not a node, so no service proxy
		// runs beside it (kube-proxy-free clusters do the same).
		"--kube-apiserver-arg", "enable-aggregator-routing=true",
		"--cluster-cidr", clusterCIDR, "--service-cidr", serviceCIDR,
		// Nodes have no way out: names beyond the cluster fail at once.
		"--cluster-dns", clusterDNS, "--upstream-dns", "none"}, cfg.ServerArgs...)
	if err := cfg.start("server", args, ""); err != nil {
		return err
	}
	admin := filepath.Join(cfg.serverDir(), "admin.kubeconfig")
	if err := cfg.waitFor(ctx, 2*time.Minute, []string{"server"}, func() error {
		rc, err := clientcmd.BuildConfigFromFlags("", admin)
		if err != nil {
			return err
		}
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return err
		}
		_, err = cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}); err != nil {
		return fmt.Errorf("server did not become ready: %w", err)
	}
	data, err := os.ReadFile(admin)
	if err != nil {
		return err
	}
	return atomicfile.Write(Kubeconfig(cfg.DataDir), data, 0o600)
}

func (cfg *Config) startAgent(i int, node string) error {
	ns := cfg.netns(node)
	if err := cfg.netnsOnBridge(ns, cfg.hostVeth(i), cfg.nodeIP(i)); err != nil {
		return err
	}
	// Real nodes reach ClusterIPs through their default route, which
	// iptables mode needs for the node's own connections (the nat OUTPUT
	// hook runs after the route lookup). These nodes have no default route,
	// so they get one for the Service range alone.
	if err := run("ip", "-n", ns, "route", "replace", serviceCIDR, "dev", "eth0"); err != nil {
		return err
	}
	args := []string{"nsenter", "--net=/run/netns/" + ns, cfg.Binary, "agent",
		"--server", cfg.serverURL(),
		// From the file: a token on the command line shows in every ps listing.
		"--token-file", filepath.Join(cfg.serverDir(), "join-token"),
		"--ca-file", filepath.Join(cfg.serverDir(), "pki", "ca.crt"),
		"--node-name", node, "--node-ip", cfg.nodeIP(i), "--cgroup-root", nodeCgroup(node),
		"--data-dir", cfg.DataDir, "--run-dir", cfg.RunDir,
		"--cni-conf-dir", CNIConfDir(cfg.DataDir, node),
		"--routing", cfg.Routing, "--mode", cfg.Mode,
		"--cluster-cidr", clusterCIDR, "--service-cidr", serviceCIDR, "--cluster-dns", clusterDNS,
	}
	for _, img := range cfg.Images {
		args = append(args, "--import-images", img)
	}
	if cfg.Network == "none" {
		// A network installed on the cluster brings its own plugins: none
		// beside capstan, only those it puts in the node's CNI bin dir.
		args = append(args, "--network", "none", "--cni-bin-dir", CNIBinDir(cfg.DataDir, node))
	}
	// The agent, its containerd and the shims live in the node's cgroup,
	// so Down can end every process of the node at once.
	return cfg.start(node, append(args, cfg.AgentArgs...), filepath.Join(nodeCgroup(node), "agent"))
}

// startKubeProxies runs the upstream kube-proxy in every node, once its
// Node is registered (kube-proxy reads the node's address once, at start).
// Conntrack limits are host-wide: a node's namespace cannot set them, so
// kube-proxy leaves them alone, as kind runs it.
func (cfg *Config) startKubeProxies(ctx context.Context, nodes []string) error {
	if err := cfg.waitFor(ctx, 2*time.Minute, append([]string{"server"}, nodes...), func() error {
		return nodesRegistered(ctx, Kubeconfig(cfg.DataDir), nodes)
	}); err != nil {
		return fmt.Errorf("before starting kube-proxy: %w", err)
	}
	for _, node := range nodes {
		if err := cfg.start(node+"-kube-proxy", []string{"nsenter", "--net=/run/netns/" + cfg.netns(node), cfg.KubeProxy,
			"--kubeconfig", Kubeconfig(cfg.DataDir), "--hostname-override", node, "--proxy-mode", "iptables",
			"--cluster-cidr", clusterCIDR, "--nodeport-addresses", "primary", "--conntrack-max-per-core", "0",
		}, filepath.Join(nodeCgroup(node), "kube-proxy")); err != nil {
			return err
		}
	}
	return nil
}

// waitReady waits for every node to be Ready while the cluster's processes run.
func (cfg *Config) waitReady(ctx context.Context, nodes []string) error {
	procs := append([]string{"server"}, nodes...)
	if cfg.KubeProxy != "" {
		for _, n := range nodes {
			procs = append(procs, n+"-kube-proxy")
		}
	}
	return cfg.waitFor(ctx, cfg.ReadyTimeout, procs, func() error {
		if cfg.Network == "none" {
			// NotReady until a network is installed: registered is all.
			return nodesRegistered(ctx, Kubeconfig(cfg.DataDir), nodes)
		}
		return nodesReady(ctx, Kubeconfig(cfg.DataDir), nodes)
	})
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(rc)
}

// eachNode runs check on every node's Node object.
func eachNode(ctx context.Context, kubeconfig string, nodes []string, check func(*corev1.Node) error) error {
	cs, err := kubeClient(kubeconfig)
	if err != nil {
		return err
	}
	for _, name := range nodes {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := check(n); err != nil {
			return err
		}
	}
	return nil
}

func nodesRegistered(ctx context.Context, kubeconfig string, nodes []string) error {
	return eachNode(ctx, kubeconfig, nodes, func(n *corev1.Node) error {
		if len(n.Status.Addresses) == 0 {
			return fmt.Errorf("node %s has no address yet", n.Name)
		}
		return nil
	})
}

func nodesReady(ctx context.Context, kubeconfig string, nodes []string) error {
	return eachNode(ctx, kubeconfig, nodes, func(n *corev1.Node) error {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("node %s is not Ready", n.Name)
	})
}
