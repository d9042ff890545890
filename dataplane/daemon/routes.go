package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// Routing modes between nodes.
const (
	RoutingNative = "native"
	RoutingVXLAN  = "vxlan"
)

// routeProtocol marks the kernel routes the daemon owns, so it can find
// and remove its stale ones without touching anybody else's.
const routeProtocol netlink.RouteProtocol = 0xca

// NodeRoute is one remote node's pod range and where it lives.
type NodeRoute struct {
	PodCIDR netip.Prefix
	NodeIP  netip.Addr
}

// desiredRoutes lists the pod CIDRs of every other node with an
// InternalIP.
func desiredRoutes(nodes []*corev1.Node, self string) []NodeRoute {
	var out []NodeRoute
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		var ip netip.Addr
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				if p, err := netip.ParseAddr(a.Address); err == nil && p.Is4() {
					ip = p
					break
				}
			}
		}
		if !ip.IsValid() {
			continue
		}
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, c := range cidrs {
			if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
				out = append(out, NodeRoute{PodCIDR: p.Masked(), NodeIP: ip})
			}
		}
	}
	return out
}

// nativeRouter keeps one kernel route per remote node's pod CIDR, via that
// node's address, in the node's network namespace: plain routing on a
// flat underlay, as Cilium's auto-direct-node-routes does.
type nativeRouter struct {
	netns string
	nodes corelisters.NodeLister
	self  string
	log   *slog.Logger
}

// syncLoop runs sync now, on every kick (a Node changed) and every 10 s,
// until ctx ends; a failure is retried on the next round.
func syncLoop(ctx context.Context, kick <-chan struct{}, sync func() error, log *slog.Logger, what string) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		if err := sync(); err != nil {
			log.Warn("sync "+what, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-t.C:
		}
	}
}

func (r *nativeRouter) sync() error {
	nodes, err := r.nodes.List(labels.Everything())
	if err != nil {
		return err
	}
	want := map[netip.Prefix]netip.Addr{}
	for _, nr := range desiredRoutes(nodes, r.self) {
		want[nr.PodCIDR] = nr.NodeIP
	}
	return syncKernelRoutes(r.netns, want, "", r.log)
}

// syncKernelRoutes makes the daemon's kernel routes (marked with
// routeProtocol) in the netns equal to want: podCIDR via the node's
// address, or, with dev, podCIDR through that device (the VXLAN device,
// whose egress program picks the tunnel endpoint).
func syncKernelRoutes(netns string, want map[netip.Prefix]netip.Addr, dev string, log *slog.Logger) error {
	return inNetns(netns, func() error {
		linkIndex := 0
		if dev != "" {
			l, err := netlink.LinkByName(dev)
			if err != nil {
				return fmt.Errorf("find %s: %w", dev, err)
			}
			linkIndex = l.Attrs().Index
		}
		matches := func(rt netlink.Route, gw netip.Addr) bool {
			if dev != "" {
				return rt.LinkIndex == linkIndex && rt.Gw == nil
			}
			return rt.Gw != nil && rt.Gw.Equal(net.IP(gw.AsSlice()))
		}
		var errs []error
		have, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		todo := map[netip.Prefix]netip.Addr{}
		for p, gw := range want {
			todo[p] = gw
		}
		for _, rt := range have {
			if rt.Dst == nil {
				continue
			}
			p, ok := netipPrefix(rt.Dst)
			gw, wanted := want[p]
			if ok && wanted && matches(rt, gw) {
				delete(todo, p) // already right
				continue
			}
			if !ok || !wanted {
				if err := netlink.RouteDel(&rt); err != nil {
					errs = append(errs, fmt.Errorf("delete route %s: %w", rt.Dst, err))
				}
			}
		}
		for p, gw := range todo {
			rt := &netlink.Route{
				Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
				Protocol: routeProtocol,
			}
			if dev != "" {
				rt.LinkIndex, rt.Scope = linkIndex, netlink.SCOPE_LINK
			} else {
				rt.Gw = gw.AsSlice()
			}
			if err := netlink.RouteReplace(rt); err != nil {
				errs = append(errs, fmt.Errorf("route %s: %w", p, err))
				continue
			}
			log.Info("route to node pods", "podCIDR", p, "node", gw, "dev", dev)
		}
		return errors.Join(errs...)
	})
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a, bits).Masked(), true
}

// vxlanDevice is the node's collect-metadata VXLAN device; BPF picks the
// remote tunnel endpoint per packet.
const (
	vxlanDevice = "capstan-vxlan"
	vxlanPort   = 8472
)

// ensureVXLAN creates (or finds) the VXLAN device in the current netns,
// up, with reverse-path filtering off, and returns its ifindex.
func ensureVXLAN(procDir string) (int, error) {
	if l, err := netlink.LinkByName(vxlanDevice); err == nil {
		if _, ok := l.(*netlink.Vxlan); !ok {
			return 0, fmt.Errorf("%s exists and is not a vxlan device", vxlanDevice)
		}
		if err := netlink.LinkSetARPOff(l); err != nil {
			return 0, err
		}
		return l.Attrs().Index, netlink.LinkSetUp(l)
	}
	v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: vxlanDevice}, FlowBased: true, Port: vxlanPort, Learning: false}
	if err := netlink.LinkAdd(v); err != nil {
		return 0, fmt.Errorf("create %s: %w", vxlanDevice, err)
	}
	l, err := netlink.LinkByName(vxlanDevice)
	if err != nil {
		return 0, err
	}
	// No ARP: the device's egress program addresses every packet.
	if err := netlink.LinkSetARPOff(l); err != nil {
		return 0, fmt.Errorf("set %s noarp: %w", vxlanDevice, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return 0, fmt.Errorf("set %s up: %w", vxlanDevice, err)
	}
	// Decapsulated packets come from remote pods, which no route here
	// points back through this device.
	os.WriteFile(filepath.Join(procDir, "sys/net/ipv4/conf", vxlanDevice, "rp_filter"), []byte("0"), 0o644)
	return l.Attrs().Index, nil
}

// tunnelRouter keeps the BPF tunnel map equal to the remote nodes'
// podCIDRs and addresses.
type tunnelRouter struct {
	netns string
	dp    interface {
		SetTunnelRoutes(map[netip.Prefix]netip.Addr) error
	}
	nodes corelisters.NodeLister
	self  string
	log   *slog.Logger
}

func (r *tunnelRouter) sync() error {
	nodes, err := r.nodes.List(labels.Everything())
	if err != nil {
		return err
	}
	want := map[netip.Prefix]netip.Addr{}
	for _, nr := range desiredRoutes(nodes, r.self) {
		want[nr.PodCIDR] = nr.NodeIP
	}
	if err := r.dp.SetTunnelRoutes(want); err != nil {
		return err
	}
	// The node's own traffic to remote pods takes these routes into the
	// device; pods' traffic is encapsulated before the stack sees it.
	return syncKernelRoutes(r.netns, want, vxlanDevice, r.log)
}
