package cni

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// ConfListName is the node's network configuration list in the CNI conf dir.
const ConfListName = "10-capstan.conflist"

// ConfList is what the node's capstan-cni configuration list says.
type ConfList struct {
	ConfDir      string
	PodCIDRs     []string
	IPAMDir      string
	EndpointsDir string
	MTU          int
	// Portmap, when set, is the plugin type (binary name) of the upstream
	// portmap plugin, chained after capstan-cni: it gives pods their
	// hostPorts (with DNAT rules in the node's netfilter).
	Portmap string
}

// WriteConfList writes the node's capstan-cni configuration list, replacing
// an older one only when it differs. containerd watches the directory: the
// node turns Ready once a configuration is there.
func WriteConfList(c ConfList) (bool, error) {
	if len(c.PodCIDRs) == 0 {
		return false, fmt.Errorf("cni config: no pod CIDR")
	}
	plugins := []map[string]any{{
		"type":         PluginType,
		"podCIDRs":     c.PodCIDRs,
		"dataDir":      c.IPAMDir,
		"endpointsDir": c.EndpointsDir,
		"mtu":          c.MTU,
	}}
	if c.Portmap != "" {
		// snat: a hostPort on 127.0.0.1 (or reached from the node
		// itself) answers too, as with Calico's and k3s's flannel conflists.
		plugins = append(plugins, map[string]any{
			"type": c.Portmap, "capabilities": map[string]bool{"portMappings": true}, "snat": true,
		})
	}
	conf := map[string]any{"cniVersion": "1.1.0", "name": "capstan", "plugins": plugins}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return false, err
	}
	path := filepath.Join(c.ConfDir, ConfListName)
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return false, nil
	}
	if err := atomicfile.Write(path, data, 0o644); err != nil {
		return false, fmt.Errorf("write cni config: %w", err)
	}
	return true, nil
}
