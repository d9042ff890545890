package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/capstan-net/capstan/cni"
)

// CNIConfig is where the node's CNI configuration goes and what it says
// beyond the pod CIDRs, which come from the Node.
type CNIConfig struct {
	// ConfDir is the CNI configuration directory the container runtime
	// reads; empty writes nothing.
	ConfDir string
	// BinDir is the CNI plugin directory capstan-cni is installed in;
	// Uninstall removes Capstan's plugins from it.
	BinDir string
	// IPAMDir keeps the node's address allocations.
	IPAMDir string
	// MTU of pods' interfaces; zero is 1500, less the VXLAN header (50
	// bytes) when pods' traffic to other nodes is encapsulated.
	MTU int
	// Portmap is the plugin type of the upstream portmap plugin chained
	// for hostPorts; empty chains none.
	Portmap string
}

func (c CNIConfig) mtu(routing string) int {
	switch {
	case c.MTU != 0:
		return c.MTU
	case routing == RoutingVXLAN:
		return 1450
	default:
		return 1500
	}
}

// writeCNIConfig waits for the node's pod CIDRs and writes the CNI
// configuration list, retrying until it is written or ctx ends.
func writeCNIConfig(ctx context.Context, cs kubernetes.Interface, cfg *Config, log *slog.Logger) {
	for {
		err := func() error {
			n, err := cs.CoreV1().Nodes().Get(ctx, cfg.NodeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(n.Spec.PodCIDRs) == 0 {
				log.Info("waiting for the node's pod CIDRs")
				return errNotYet
			}
			if err := os.MkdirAll(cfg.CNI.ConfDir, 0o755); err != nil {
				return err
			}
			_, err = cni.WriteConfList(cni.ConfList{
				ConfDir: cfg.CNI.ConfDir, PodCIDRs: n.Spec.PodCIDRs, IPAMDir: cfg.CNI.IPAMDir,
				EndpointsDir: cfg.EndpointsDir, MTU: cfg.CNI.mtu(cfg.Routing), Portmap: cfg.CNI.Portmap,
			})
			if err == nil {
				log.Info("pod network ready", "podCIDRs", n.Spec.PodCIDRs, "conf", filepath.Join(cfg.CNI.ConfDir, cni.ConfListName))
			}
			return err
		}()
		if err == nil {
			return
		}
		if !errors.Is(err, errNotYet) {
			log.Warn("write the CNI configuration", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// errNotYet: the node has no pod CIDR yet, which is no failure.
var errNotYet = errors.New("no pod CIDR yet")
