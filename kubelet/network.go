package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// Attachment names one pod network attachment (CNI container ID + ifname).
type Attachment struct{ ContainerID, IfName string }

// Network wires pod sandboxes to the cluster network.
type Network interface {
	// Ready reports whether a network configuration is in place.
	Ready() error
	// Add attaches the sandbox and returns the pod's IPs.
	Add(ctx context.Context, pod *corev1.Pod, netns string) ([]net.IP, error)
	// Del detaches the sandbox of the pod with this UID; safe to repeat.
	Del(ctx context.Context, uid, netns string) error
	// GC releases every attachment not in valid.
	GC(ctx context.Context, valid []Attachment) error
}

// ErrNoNetworkConfig means the node has no CNI configuration yet (no podCIDR).
var ErrNoNetworkConfig = errors.New("kubelet: no CNI network configuration")

// CNINetwork is a Network that runs CNI plugins through libcni with the
// first configuration list in ConfDir, as upstream's kubelet does.
type CNINetwork struct {
	ConfDir  string
	BinDirs  []string
	CacheDir string
}

const podIfName = "eth0"

func (n *CNINetwork) load() (*libcni.NetworkConfigList, *libcni.CNIConfig, error) {
	files, err := libcni.ConfFiles(n.ConfDir, []string{".conflist"})
	if err != nil || len(files) == 0 {
		return nil, nil, fmt.Errorf("%w in %s", ErrNoNetworkConfig, n.ConfDir)
	}
	sort.Strings(files)
	list, err := libcni.ConfListFromFile(files[0])
	if err != nil {
		return nil, nil, fmt.Errorf("cni config %s: %w", files[0], err)
	}
	return list, libcni.NewCNIConfigWithCacheDir(n.BinDirs, n.CacheDir, nil), nil
}

// Ready implements Network.
func (n *CNINetwork) Ready() error {
	_, _, err := n.load()
	return err
}

func rtConf(uid, netns string, pod *corev1.Pod) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: uid, NetNS: netns, IfName: podIfName,
		Args: [][2]string{{"IgnoreUnknown", "1"}}}
	if pod != nil {
		rt.Args = append(rt.Args,
			[2]string{"K8S_POD_NAMESPACE", pod.Namespace},
			[2]string{"K8S_POD_NAME", pod.Name},
			[2]string{"K8S_POD_INFRA_CONTAINER_ID", uid},
			[2]string{"K8S_POD_UID", string(pod.UID)})
	}
	return rt
}

// Add implements Network.
func (n *CNINetwork) Add(ctx context.Context, pod *corev1.Pod, netns string) ([]net.IP, error) {
	list, cni, err := n.load()
	if err != nil {
		return nil, err
	}
	res, err := cni.AddNetworkList(ctx, list, rtConf(string(pod.UID), netns, pod))
	if err != nil {
		return nil, fmt.Errorf("cni add: %w", err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("cni result: %w", err)
	}
	var ips []net.IP
	for _, ip := range cur.IPs {
		ips = append(ips, ip.Address.IP)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("cni add: plugin returned no IP")
	}
	return ips, nil
}

// Del implements Network.
func (n *CNINetwork) Del(ctx context.Context, uid, netns string) error {
	list, cni, err := n.load()
	if err != nil {
		return err
	}
	if err := cni.DelNetworkList(ctx, list, rtConf(uid, netns, nil)); err != nil {
		return fmt.Errorf("cni del: %w", err)
	}
	return nil
}

// GC implements Network.
func (n *CNINetwork) GC(ctx context.Context, valid []Attachment) error {
	list, cni, err := n.load()
	if err != nil {
		return err
	}
	// A non-nil list: an absent one tells the plugin to remove nothing.
	args := &libcni.GCArgs{ValidAttachments: []cnitypes.GCAttachment{}}
	for _, a := range valid {
		args.ValidAttachments = append(args.ValidAttachments, cnitypes.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	return cni.GCNetworkList(ctx, list, args)
}

// WriteCNIConfig writes the node's capstan-cni configuration list for its
// podCIDR, replacing an older one only when it differs.
func WriteCNIConfig(confDir, podCIDR, ipamDir, endpointsDir string, mtu int) (bool, error) {
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "capstan",
		"plugins": []map[string]any{{
			"type":         "capstan-cni",
			"podCIDR":      podCIDR,
			"dataDir":      ipamDir,
			"endpointsDir": endpointsDir,
			"mtu":          mtu,
		}},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return false, err
	}
	path := filepath.Join(confDir, "10-capstan.conflist")
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return false, nil
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return false, fmt.Errorf("cni conf dir: %w", err)
	}
	if err := atomicfile.Write(path, data, 0o644); err != nil {
		return false, fmt.Errorf("write cni config: %w", err)
	}
	return true, nil
}
