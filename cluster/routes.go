package cluster

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// routePodCIDRs gives the server's namespace a route to each node's pod
// CIDRs through that node's underlay address, so the API server reaches pods
// as a control-plane machine of a routed cluster does. The node owning a
// CIDR delivers to its pods in either routing mode. The routes go with the
// namespace at Down; a resume replaces them.
func (cfg *Config) routePodCIDRs(ctx context.Context, nodes []string) error {
	return eachNode(ctx, Kubeconfig(cfg.DataDir), nodes, func(n *corev1.Node) error {
		ip := nodeInternalIP(n)
		if ip == "" {
			return fmt.Errorf("node %s has no InternalIP", n.Name)
		}
		for _, cidr := range n.Spec.PodCIDRs {
			if err := run("ip", "-n", cfg.serverNetns(), "route", "replace", cidr, "via", ip, "dev", "eth0"); err != nil {
				return err
			}
		}
		return nil
	})
}

func nodeInternalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}
