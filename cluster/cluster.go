// Package cluster runs a local multi-node Capstan cluster on one machine,
// the way kind does for Kubernetes but with no Docker: one `capstan server`
// and N `capstan agent`s (each with its own containerd and upstream
// kubelet), each node a network namespace whose eth0 sits on a shared
// underlay bridge. Up is idempotent (it resumes a cluster whose processes
// stopped); Down removes everything Up made.
package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

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
	// Network is the nodes' pod network: "capstan" (the default: each
	// agent runs the dataplane) or "none" (no pod network and no Service
	// proxy, nodes NotReady, as a kubeadm cluster before its CNI; Capstan's
	// Helm chart installs one).
	Network string
	// ServerArgs and AgentArgs are extra `capstan server` and `capstan
	// agent` flags (tests shorten the node monitor grace period with them).
	ServerArgs []string
	AgentArgs  []string
	// Subnet is the underlay /24: .1 is the host, .10 the server's own
	// namespace, nodes are .11 upwards, the outside client .250.
	Subnet netip.Prefix
	Port   int
	Binary string   // the capstan binary
	Images []string // archives every agent imports
	// ReadyTimeout bounds Up's wait for every node to be Ready (default 3m).
	ReadyTimeout time.Duration
	Log          *slog.Logger
}

// Defaults for `capstan up`.
const (
	clusterCIDR = "10.244.0.0/16"
	serviceCIDR = "10.96.0.0/16"
	// clusterDNS is the kube-dns Service's address, the server's default
	// for serviceCIDR, given to server and agents alike.
	clusterDNS = "10.96.0.10"

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
	Server  string   `json:"server,omitempty"` // the API server's URL
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
	switch c.Network {
	case "":
		c.Network = "capstan"
	case "capstan":
	case "none":
		if c.KubeProxy != "" {
			return errors.New("--network none brings no Service proxy: drop --kube-proxy")
		}
	default:
		return fmt.Errorf("--network %q: want capstan or none", c.Network)
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
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 3 * time.Minute
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

func (c *Config) dir() string          { return filepath.Join(c.DataDir, "cluster") }
func (c *Config) serverDir() string    { return filepath.Join(c.dir(), "server") }
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
func (c *Config) serverIP() string    { return c.host(10) }
func (c *Config) nodeIP(i int) string { return c.host(11 + i) }
func (c *Config) serverURL() string   { return "https://" + c.serverIP() + ":" + strconv.Itoa(c.Port) }
func (c *Config) serverNetns() string { return c.Name + "-server" }

// serverVeth and outsideVeth are the host ends of those namespaces' links.
func (c *Config) serverVeth() string  { return trim(c.Name, 9) + "sh" }
func (c *Config) outsideVeth() string { return trim(c.Name, 9) + "oh" }
func (c *Config) netns(node string) string {
	if len(node) > len(c.Name) && node[:len(c.Name)+1] == c.Name+"-" {
		return node
	}
	return c.Name + "-" + node
}
func (c *Config) hostVeth(i int) string { return fmt.Sprintf("%s%dh", trim(c.Name, 9), i+1) }

// CNIConfDir and CNIBinDir are a node's CNI directories: its own, since
// the nodes share the host's filesystem (a network installed on the
// cluster writes there; Capstan's chart takes paths with $(NODE_NAME)).
func CNIConfDir(dataDir, node string) string { return filepath.Join(dataDir, "nodes", node, "cni") }
func CNIBinDir(dataDir, node string) string  { return filepath.Join(dataDir, "nodes", node, "cni-bin") }

// Kubeconfig is where Up writes the cluster's admin kubeconfig.
func Kubeconfig(dataDir string) string { return filepath.Join(dataDir, "cluster", "kubeconfig") }

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ReadState returns what Up recorded for the cluster in dataDir.
func ReadState(dataDir string) (*State, error) {
	return readState(filepath.Join(dataDir, "cluster", "state.json"))
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
