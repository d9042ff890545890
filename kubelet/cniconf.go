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
}

// WriteCNIConfig writes the node's capstan-cni configuration list, replacing
// an older one only when it differs. containerd watches the directory: the
// node turns Ready once a configuration is there.
func WriteCNIConfig(c CNIConfig) (bool, error) {
	if len(c.PodCIDRs) == 0 {
		return false, fmt.Errorf("cni config: no pod CIDR")
	}
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "capstan",
		"plugins": []map[string]any{{
			"type":         "capstan-cni",
			"podCIDRs":     c.PodCIDRs,
			"dataDir":      c.IPAMDir,
			"endpointsDir": c.EndpointsDir,
			"mtu":          c.MTU,
		}},
	}
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
