package kubelet

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// CNIConfigName is the node's network configuration list in the CNI conf dir.
const CNIConfigName = "10-capstan.conflist"

// CNIConfig is what the node's capstan-cni configuration says.
type CNIConfig struct {
	ConfDir      string
	PodCIDRs     []string
	IPAMDir      string
	EndpointsDir string
	MTU          int
	// HostPorts chains the upstream portmap plugin after capstan-cni, which
	// gives pods their hostPorts (with DNAT rules in the node's netfilter).
	HostPorts bool
}

// WriteCNIConfig writes the node's capstan-cni configuration list, replacing
// an older one only when it differs. containerd watches the directory: the
// node turns Ready once a configuration is there.
func WriteCNIConfig(c CNIConfig) (bool, error) {
	if len(c.PodCIDRs) == 0 {
		return false, fmt.Errorf("cni config: no pod CIDR")
	}
	plugins := []map[string]any{{
		"type":         "capstan-cni",
		"podCIDRs":     c.PodCIDRs,
		"dataDir":      c.IPAMDir,
		"endpointsDir": c.EndpointsDir,
		"mtu":          c.MTU,
	}}
	if c.HostPorts {
		// snat: a hostPort on 127.0.0.1 (or reached from the node
		// itself) answers too, as with Calico's and k3s's flannel conflists.
		plugins = append(plugins, map[string]any{
			"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true,
		})
	}
	conf := map[string]any{"cniVersion": "1.1.0", "name": "capstan", "plugins": plugins}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return false, err
	}
	path := filepath.Join(c.ConfDir, CNIConfigName)
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return false, nil
	}
	if err := atomicfile.Write(path, data, 0o644); err != nil {
		return false, fmt.Errorf("write cni config: %w", err)
	}
	return true, nil
}
