// Package cluster runs a local multi-node Capstan cluster on one machine,
// the way kind does for Kubernetes but with no Docker: one `capstan server`
// and N `capstan agent`s, each node a network namespace whose eth0 sits on
// a shared underlay bridge. Up is idempotent (it resumes a cluster whose
// processes stopped); Down removes everything Up made.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// Config describes a local cluster.
type Config struct {
	// Name prefixes everything made on the host (netns, links, node
	// names' namespaces), so test clusters never meet the user's.
	Name    string
	DataDir string // the cluster's state is DataDir/cluster, nodes' DataDir/nodes/<node>
	RunDir  string
	Nodes   int
	Routing string // native or vxlan
	// Mode is how nodes implement Services: ebpf (the default), iptables, or
	// none with the upstream kube-proxy at KubeProxy running in every node.
	Mode      string
	KubeProxy string
	// ServerArgs are extra `capstan server` flags (tests shorten the node
	// monitor grace period with them).
	ServerArgs []string
	// Subnet is the underlay /24: .1 is the host (and the server), nodes
	// are .11 upwards, the outside client .250.
	Subnet           netip.Prefix
	Port             int
	Binary           string   // the capstan binary
	Images           []string // archives every agent imports
	ContainerdSocket string
	Log              *slog.Logger
}

// Defaults for `capstan up`.
const (
	clusterCIDR = "10.244.0.0/16"
	serviceCIDR = "10.96.0.0/16"

	DefaultName   = "capstan"
	DefaultSubnet = "172.30.0.0/24"
)

// State is what Up records for Down and for resuming.
type State struct {
	Name    string   `json:"name"`
	Nodes   []string `json:"nodes"`
	Routing string   `json:"routing"`
	Mode    string   `json:"mode,omitempty"`
	Subnet  string   `json:"subnet"`
	Port    int      `json:"port"`
	// MountedBPFFS records that Up mounted /sys/fs/bpf, for Down to undo.
	MountedBPFFS bool `json:"mountedBPFFS,omitempty"`
}

func (c *Config) setDefaults() error {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Nodes <= 0 {
		c.Nodes = 3
	}
	if c.Nodes > 200 {
		return fmt.Errorf("--nodes %d: at most 200", c.Nodes)
	}
	if c.Routing == "" {
		c.Routing = "native"
	}
	if c.Routing != "native" && c.Routing != "vxlan" {
		return fmt.Errorf("--routing %q: want native or vxlan", c.Routing)
	}
	if c.Mode == "" {
		c.Mode = "ebpf"
	}
	switch {
	case c.Mode != "ebpf" && c.Mode != "iptables" && c.Mode != "none":
		return fmt.Errorf("--mode %q: want ebpf, iptables or none", c.Mode)
	case c.Mode == "none" && c.KubeProxy == "":
		return errors.New("--mode none leaves Services to kube-proxy: give its binary with --kube-proxy (tools/kube-proxy/build.sh builds it)")
	case c.KubeProxy != "" && c.Mode != "none":
		return fmt.Errorf("--kube-proxy needs --mode none (the node would run two service proxies)")
	}
	if !c.Subnet.IsValid() {
		c.Subnet = netip.MustParsePrefix(DefaultSubnet)
	}
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() != 24 {
		return fmt.Errorf("underlay subnet %s: want an IPv4 /24", c.Subnet)
	}
	if c.Port == 0 {
		c.Port = 6443
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.ContainerdSocket == "" {
		c.ContainerdSocket = "/run/capstan/containerd/containerd.sock"
	}
	return nil
}

func (c *Config) dir() string          { return filepath.Join(c.DataDir, "cluster") }
func (c *Config) stateFile() string    { return filepath.Join(c.dir(), "state.json") }
func (c *Config) bridge() string       { return c.Name + "0" }
func (c *Config) outsideNetns() string { return c.Name + "-outside" }
func (c *Config) nodeName(i int) string {
	if c.Name == DefaultName {
		return fmt.Sprintf("node-%d", i+1)
	}
	return fmt.Sprintf("%s-node-%d", c.Name, i+1)
}
func (c *Config) host(last int) string {
	a := c.Subnet.Addr().As4()
	a[3] = byte(last)
	return netip.AddrFrom4(a).String()
}
func (c *Config) hostIP() string      { return c.host(1) }
func (c *Config) nodeIP(i int) string { return c.host(11 + i) }
func (c *Config) netns(node string) string {
	if strings.HasPrefix(node, c.Name+"-") {
		return node
	}
	return c.Name + "-" + node
}
func (c *Config) hostVeth(i int) string { return fmt.Sprintf("%s%dh", trim(c.Name, 9), i+1) }

// Kubeconfig is where Up writes the cluster's admin kubeconfig.
func Kubeconfig(dataDir string) string { return filepath.Join(dataDir, "cluster", "kubeconfig") }

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Up creates what is missing and starts what is not running.
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
	st := &State{Name: cfg.Name, Routing: cfg.Routing, Mode: cfg.Mode, Subnet: cfg.Subnet.String(), Port: cfg.Port}
	old, oldErr := readState(cfg.stateFile())
	if oldErr == nil {
		st.MountedBPFFS = old.MountedBPFFS
	}
	if !isBPFFS(bpfRoot) {
		if err := os.MkdirAll(bpfRoot, 0o755); err != nil {
			return nil, err
		}
		if err := syscall.Mount("bpffs", bpfRoot, "bpf", 0, "mode=0700"); err != nil {
			return nil, fmt.Errorf("mount bpffs at %s: %w", bpfRoot, err)
		}
		st.MountedBPFFS = true
	}
	if oldErr == nil {
		// Resuming: keep what the cluster was made with.
		if len(old.Nodes) > 0 && old.Routing != cfg.Routing {
			return nil, fmt.Errorf("cluster %s runs with --routing %s; run capstan down first to change it", cfg.Name, old.Routing)
		}
		// A node switches modes by restarting its agent, which cleans up the
		// other mode's programs or rules; a running agent would keep the old one.
		if oldMode := old.Mode; len(old.Nodes) > 0 && oldMode != "" && oldMode != cfg.Mode {
			for _, n := range old.Nodes {
				if cfg.running(n) != 0 {
					return nil, fmt.Errorf("cluster %s runs in --mode %s and node %s is up; run capstan down (or stop its agents) to change it", cfg.Name, oldMode, n)
				}
			}
		}
	}
	for i := 0; i < cfg.Nodes; i++ {
		st.Nodes = append(st.Nodes, cfg.nodeName(i))
	}
	if err := writeState(cfg.stateFile(), st); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.ContainerdSocket); err != nil {
		return nil, fmt.Errorf("no containerd at %s: start one (scripts/containerd.sh start)", cfg.ContainerdSocket)
	}

	// Underlay: a bridge with the host on .1; no route to pod CIDRs.
	if !linkExists(cfg.bridge()) {
		if err := run("ip", "link", "add", cfg.bridge(), "type", "bridge"); err != nil {
			return nil, err
		}
	}
	run("ip", "addr", "replace", cfg.hostIP()+"/24", "dev", cfg.bridge())
	if err := run("ip", "link", "set", cfg.bridge(), "up"); err != nil {
		return nil, err
	}
	netnsOn := func(ns, veth, ip string) error {
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
	if err := netnsOn(cfg.outsideNetns(), trim(cfg.Name, 9)+"oh", cfg.host(250)); err != nil {
		return nil, err
	}

	serverDir := filepath.Join(cfg.dir(), "server")
	if err := cfg.start("server", append([]string{cfg.Binary, "server", "--data-dir", serverDir,
		"--bind-address", cfg.hostIP(), "--advertise-address", cfg.hostIP(), "--secure-port", strconv.Itoa(cfg.Port)}, cfg.ServerArgs...)); err != nil {
		return nil, err
	}
	admin := filepath.Join(serverDir, "admin.kubeconfig")
	token := filepath.Join(serverDir, "join-token")
	if err := waitFile(ctx, admin, 90*time.Second); err != nil {
		return nil, fmt.Errorf("server did not start (see %s): %w", cfg.logFile("server"), err)
	}
	data, err := os.ReadFile(admin)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(Kubeconfig(cfg.DataDir), data, 0o600); err != nil {
		return nil, err
	}
	if _, err := os.Stat(token); err != nil {
		return nil, err
	}
	for i, node := range st.Nodes {
		ns := cfg.netns(node)
		if err := netnsOn(ns, cfg.hostVeth(i), cfg.nodeIP(i)); err != nil {
			return nil, err
		}
		// Real nodes reach ClusterIPs through their default route, which
		// iptables mode needs for the node's own connections (the nat
		// OUTPUT hook runs after the route lookup). These nodes have no
		// default route, so they get one for the Service range alone.
		if err := run("ip", "-n", ns, "route", "replace", serviceCIDR, "dev", "eth0"); err != nil {
			return nil, err
		}
		args := []string{"nsenter", "--net=/run/netns/" + ns, cfg.Binary, "agent",
			"--server", "https://" + cfg.hostIP() + ":" + strconv.Itoa(cfg.Port),
			// From the file: a token on the command line shows in every ps listing.
			"--token-file", token, "--ca-file", filepath.Join(serverDir, "pki", "ca.crt"),
			"--node-name", node, "--node-ip", cfg.nodeIP(i),
			"--data-dir", cfg.DataDir, "--run-dir", cfg.RunDir,
			"--cni-conf-dir", filepath.Join(cfg.DataDir, "nodes", node, "cni"),
			"--containerd-socket", cfg.ContainerdSocket, "--routing", cfg.Routing, "--mode", cfg.Mode,
			"--cluster-cidr", clusterCIDR, "--service-cidr", serviceCIDR,
		}
		for _, img := range cfg.Images {
			args = append(args, "--import-images", img)
		}
		if err := cfg.start(node, args); err != nil {
			return nil, err
		}
	}
	if cfg.KubeProxy != "" {
		// kube-proxy reads its node's address from the Node object once, at start: started
		// before the agent registers it, it runs without one. So each waits for its Node.
		if err := waitNodes(ctx, Kubeconfig(cfg.DataDir), st.Nodes, 2*time.Minute); err != nil {
			return nil, fmt.Errorf("before starting kube-proxy: %w", err)
		}
		for _, node := range st.Nodes {
			// The upstream kube-proxy in iptables mode, as users who keep it run it.
			if err := cfg.start(node+"-kube-proxy", []string{"nsenter", "--net=/run/netns/" + cfg.netns(node), cfg.KubeProxy,
				"--kubeconfig", Kubeconfig(cfg.DataDir), "--hostname-override", node, "--proxy-mode", "iptables",
				"--cluster-cidr", clusterCIDR, "--nodeport-addresses", "primary"}); err != nil {
				return nil, err
			}
		}
	}
	return st, nil
}

// waitNodes waits until every node has registered its Node object with an address.
func waitNodes(ctx context.Context, kubeconfig string, nodes []string, timeout time.Duration) error {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for _, name := range nodes {
		for {
			n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err == nil && len(n.Status.Addresses) > 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("node %s did not register within %s: %v", name, timeout, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return nil
}

// StopAgent stops one node's agent and leaves its pods, programs and state in
// place, as a crashed or stopped kubelet would; Up starts it again.
func StopAgent(cfg Config, node string) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if cfg.running(node) == 0 {
		return fmt.Errorf("node %s: no agent running", node)
	}
	cfg.stop(node)
	return nil
}

// Down stops the cluster's processes and removes its containers, images,
// network namespaces, links, pinned BPF objects, cgroups and state.
func Down(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	st, err := readState(cfg.stateFile())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			st = &State{Name: cfg.Name}
		} else {
			return err
		}
	}
	var errs []error
	// Agents first (pods keep running without them), then the server.
	for _, node := range st.Nodes {
		cfg.stop(node + "-kube-proxy")
		cfg.stop(node)
	}
	cfg.stop("server")
	for _, node := range st.Nodes {
		if err := removeContainers(ctx, cfg.ContainerdSocket, "capstan-"+node); err != nil {
			errs = append(errs, fmt.Errorf("containers of %s: %w", node, err))
		}
		// Pod network namespaces pinned by the agent.
		pins, _ := filepath.Glob(filepath.Join(cfg.RunDir, node, "netns", "*"))
		for _, p := range pins {
			syscall.Unmount(p, syscall.MNT_DETACH)
		}
		os.RemoveAll(filepath.Join(cfg.RunDir, node))
		if netnsExists(cfg.netns(node)) {
			if err := run("ip", "netns", "del", cfg.netns(node)); err != nil {
				errs = append(errs, err)
			}
		}
		// Unpinning the maps and links detaches the node's programs.
		os.RemoveAll(filepath.Join(bpfRoot, "capstan", node))
		removeCgroups(filepath.Join("capstan", node))
		os.RemoveAll(filepath.Join(cfg.DataDir, "nodes", node))
	}
	os.Remove(filepath.Join(bpfRoot, "capstan"))
	if st.MountedBPFFS {
		if bpffsEmpty(bpfRoot) {
			syscall.Unmount(bpfRoot, 0)
		}
	}
	// The shared parent goes only once no node (of any cluster) uses it.
	parents, _ := filepath.Glob("/sys/fs/cgroup/*/capstan")
	for _, p := range append(parents, "/sys/fs/cgroup/capstan") {
		os.Remove(p)
	}
	if netnsExists(cfg.outsideNetns()) {
		if err := run("ip", "netns", "del", cfg.outsideNetns()); err != nil {
			errs = append(errs, err)
		}
	}
	if linkExists(cfg.bridge()) {
		if err := run("ip", "link", "del", cfg.bridge()); err != nil {
			errs = append(errs, err)
		}
	}
	os.Remove(filepath.Join(cfg.DataDir, "nodes"))
	if err := os.RemoveAll(cfg.dir()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// bpfRoot is where the agents pin their maps (their default).
const bpfRoot = "/sys/fs/bpf"

// bpffsEmpty reports whether nothing is pinned at dir (the kernel's own
// maps.debug and progs.debug do not count).
func bpffsEmpty(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".debug") {
			return false
		}
	}
	return true
}

func isBPFFS(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == 0xcafe4a11 // BPF_FS_MAGIC
}

func readState(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("cluster state %s: %w", path, err)
	}
	return &st, nil
}

func writeState(path string, st *State) error {
	data, _ := json.MarshalIndent(st, "", "  ")
	return atomicfile.Write(path, data, 0o644)
}

func (c *Config) pidFile(name string) string { return filepath.Join(c.dir(), name+".pid") }
func (c *Config) logFile(name string) string { return filepath.Join(c.dir(), "logs", name+".log") }

// running returns the pid of a live process we started under name.
func (c *Config) running(name string) int {
	data, err := os.ReadFile(c.pidFile(name))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !strings.Contains(string(cmdline), "capstan") && !strings.Contains(string(cmdline), "kube-proxy") {
		return 0 // the pid was reused
	}
	return pid
}

// start runs args detached (own session, output to the log) unless the
// process is already running.
func (c *Config) start(name string, args []string) error {
	if pid := c.running(name); pid != 0 {
		c.Log.Info("already running", "process", name, "pid", pid)
		return nil
	}
	logf, err := os.OpenFile(c.logFile(name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	c.Log.Info("started", "process", name, "pid", cmd.Process.Pid, "log", c.logFile(name))
	go cmd.Wait() // reap it if it exits while we still run
	return atomicfile.Write(c.pidFile(name), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
}

// stop ends a process with SIGTERM, then SIGKILL after 15 s.
func (c *Config) stop(name string) {
	pid := c.running(name)
	if pid == 0 {
		os.Remove(c.pidFile(name))
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 150; i++ {
		if syscall.Kill(pid, 0) != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	os.Remove(c.pidFile(name))
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

func netnsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func waitFile(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not appear in %v", path, timeout)
}

// removeCgroups removes a cgroup subtree (empty once its processes are
// gone) in every hierarchy, deepest first.
func removeCgroups(rel string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, root := range roots {
		dir := filepath.Join(root, rel)
		var dirs []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}
