package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// resolveNode fills in what the configuration leaves to the cluster: the
// node's addresses (its Node's InternalIPs), its devices (those holding
// these addresses) and the Service range (the cluster's ServiceCIDR).
// Installed as a DaemonSet, the daemon is told none of them.
func resolveNode(ctx context.Context, cs kubernetes.Interface, cfg *Config, log *slog.Logger) error {
	if len(cfg.NodeAddrs) == 0 {
		addrs, err := nodeInternalIPs(ctx, cs, cfg.NodeName, log)
		if err != nil {
			return err
		}
		cfg.NodeAddrs = addrs
	}
	if len(cfg.Devices) == 0 {
		devs, err := devicesWith(cfg.Netns, cfg.NodeAddrs)
		switch {
		case errors.Is(err, errNoDevice):
			// The node still gets pods, Services and policy.
			log.Warn("no NodePort device: "+err.Error(), "addresses", cfg.NodeAddrs)
		case err != nil:
			return err
		default:
			cfg.Devices = devs
			log.Info("devices found by the node's addresses", "devices", devs, "addresses", cfg.NodeAddrs)
		}
	}
	if !cfg.ServiceCIDR.IsValid() {
		p, err := serviceCIDR(ctx, cs)
		if err != nil {
			return err
		}
		cfg.ServiceCIDR = p
		log.Info("service range from the cluster's ServiceCIDR", "cidr", p)
	}
	return nil
}

// nodeInternalIPs waits for the node's Node object (the kubelet registers
// it) and returns its InternalIP addresses.
func nodeInternalIPs(ctx context.Context, cs kubernetes.Interface, node string, log *slog.Logger) ([]netip.Addr, error) {
	for {
		n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err == nil {
			var addrs []netip.Addr
			for _, a := range n.Status.Addresses {
				if ip, perr := netip.ParseAddr(a.Address); a.Type == corev1.NodeInternalIP && perr == nil {
					addrs = append(addrs, ip)
				}
			}
			if len(addrs) > 0 {
				return addrs, nil
			}
			err = fmt.Errorf("node %s has no InternalIP yet", node)
		}
		log.Info("waiting for the node's addresses", "node", node, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// devicesWith returns the names of the links in netns that hold one of
// addrs: the devices NodePort traffic arrives on.
func devicesWith(netns string, addrs []netip.Addr) ([]string, error) {
	var devs []string
	err := inNetns(netns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
			}
			if holdsAny(have, addrs) {
				devs = append(devs, l.Attrs().Name)
			}
		}
		return nil
	})
	if err == nil && len(devs) == 0 {
		err = fmt.Errorf("%w %v: NodePorts are not served; give the devices (--devices)", errNoDevice, addrs)
	}
	return devs, err
}

// errNoDevice: no device holds the node's addresses.
var errNoDevice = errors.New("no device holds the node's addresses")

func holdsAny(have []netlink.Addr, want []netip.Addr) bool {
	for _, h := range have {
		ip, ok := netip.AddrFromSlice(h.IP)
		if !ok {
			continue
		}
		for _, w := range want {
			if ip.Unmap() == w.Unmap() {
				return true
			}
		}
	}
	return false
}

// serviceCIDR returns the cluster's IPv4 Service range from its
// ServiceCIDR objects (networking.k8s.io/v1, the API server's
// --service-cluster-ip-range as an object).
func serviceCIDR(ctx context.Context, cs kubernetes.Interface) (netip.Prefix, error) {
	list, err := cs.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return netip.Prefix{}, fmt.Errorf("the cluster serves no ServiceCIDR API: give the Service range (--service-cidr)")
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read the cluster's ServiceCIDR (or give --service-cidr): %w", err)
	}
	for _, sc := range list.Items {
		for _, c := range sc.Spec.CIDRs {
			if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
				return p.Masked(), nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("the cluster's ServiceCIDR objects hold no IPv4 range: give --service-cidr")
}
