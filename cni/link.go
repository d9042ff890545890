package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/capstan-net/capstan/ipam"
)

// hostIfPrefix starts every node-side veth name; aliasPrefix starts its interface alias, which
// records the owning network and attachment so GC can tell the plugin's veths from others.
const (
	hostIfPrefix = "cap"
	aliasPrefix  = "capstan-cni/"
)

// HostIfName is the node-side veth of an attachment: "cap" and the first 11 hex digits of
// sha256(containerID+ifName), 14 characters, under the kernel's 15.
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + ifName))
	return hostIfPrefix + hex.EncodeToString(sum[:])[:11]
}

// ownerAlias is the alias set on the host veth: "capstan-cni/<network>/<containerID>/<ifName>".
// None of the three may contain "/" (the CNI spec forbids it in all of them).
func ownerAlias(network string, a ipam.Attachment) string {
	return aliasPrefix + network + "/" + a.ContainerID + "/" + a.IfName
}

func parseOwnerAlias(alias string) (network string, a ipam.Attachment, ok bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return "", a, false
	}
	f := strings.Split(rest, "/")
	if len(f) != 3 || f[0] == "" || f[1] == "" || f[2] == "" {
		return "", a, false
	}
	return f[0], ipam.Attachment{ContainerID: f[1], IfName: f[2]}, true
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// retryDump repeats a netlink dump the kernel interrupted because the table changed under it.
func retryDump[T any](f func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 10 {
			continue
		}
		return v, err
	}
}

// veth is one attachment's pair: host in the node netns, pod in the pod netns.
type veth struct {
	host, pod netlink.Link
	created   bool // by this call, so undo may delete it
}

// ensureVeth returns the attachment's veth pair, creating it when absent. An existing host veth
// is accepted only if it carries this attachment's alias and its peer is ifName in the pod netns.
func ensureVeth(node, pod *netlink.Handle, podNSFd int, hostName, ifName, alias string, mtu int) (*veth, error) {
	host, err := node.LinkByName(hostName)
	if err == nil {
		if host.Attrs().Alias != alias {
			return nil, fmt.Errorf("host interface %s exists with alias %q, want %q", hostName, host.Attrs().Alias, alias)
		}
		podLink, err := pod.LinkByName(ifName)
		if err != nil {
			return nil, fmt.Errorf("host interface %s exists but %s in the pod netns: %w", hostName, ifName, err)
		}
		if podLink.Type() != "veth" || podLink.Attrs().ParentIndex != host.Attrs().Index {
			return nil, fmt.Errorf("host interface %s exists but pod %s is not its peer", hostName, ifName)
		}
		return &veth{host: host, pod: podLink}, nil
	}
	if !isNotFound(err) {
		return nil, fmt.Errorf("look up %s: %w", hostName, err)
	}
	if _, err := pod.LinkByName(ifName); err == nil {
		return nil, fmt.Errorf("interface %s already exists in the pod netns", ifName)
	}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	v := netlink.NewVeth(attrs)
	v.PeerName = ifName
	v.PeerMTU = uint32(mtu)
	v.PeerNamespace = netlink.NsFd(podNSFd)
	if err := node.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("create veth %s/%s: %w", hostName, ifName, err)
	}
	// The kernel ignores IFLA_IFALIAS when creating a link, so the alias is a second step.
	err = node.LinkSetAlias(v, alias)
	out := &veth{created: true}
	if err == nil {
		out.host, err = node.LinkByName(hostName)
	}
	if err == nil {
		out.pod, err = pod.LinkByName(ifName)
	}
	if err != nil {
		node.LinkDel(v)
		return nil, fmt.Errorf("set up new veth %s/%s: %w", hostName, ifName, err)
	}
	return out, nil
}

// addressing is one pod address and the gateway the pod reaches the node through.
type addressing struct {
	ip, gw netip.Addr
}

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func defaultDst(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: make(net.IP, a.BitLen()/8), Mask: net.CIDRMask(0, a.BitLen())}
}

// hostOnlyAddr is a /32 (/128) address that adds no prefix route; IPv6 skips DAD so the address
// works at once.
func hostOnlyAddr(a netip.Addr) *netlink.Addr {
	addr := &netlink.Addr{IPNet: hostPrefix(a)}
	if a.Is6() {
		addr.Flags = unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE
	}
	return addr
}

// configurePod sets lo and the pod interface up, gives it the pod addresses as /32 (/128), a
// link route to each gateway and a default route through it.
func configurePod(pod *netlink.Handle, link netlink.Link, addrs []addressing) error {
	lo, err := pod.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("pod lo: %w", err)
	}
	if err := pod.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set pod lo up: %w", err)
	}
	if err := pod.LinkSetUp(link); err != nil {
		return fmt.Errorf("set pod %s up: %w", link.Attrs().Name, err)
	}
	idx := link.Attrs().Index
	for _, a := range addrs {
		if err := pod.AddrReplace(link, hostOnlyAddr(a.ip)); err != nil {
			return fmt.Errorf("add pod address %s: %w", a.ip, err)
		}
		gwRoute := &netlink.Route{LinkIndex: idx, Dst: hostPrefix(a.gw), Scope: netlink.SCOPE_LINK}
		if err := pod.RouteReplace(gwRoute); err != nil {
			return fmt.Errorf("add pod route to gateway %s: %w", a.gw, err)
		}
		def := &netlink.Route{LinkIndex: idx, Dst: defaultDst(a.gw), Gw: a.gw.AsSlice()}
		if err := pod.RouteReplace(def); err != nil {
			return fmt.Errorf("add pod default route via %s: %w", a.gw, err)
		}
	}
	return nil
}

// configureHost sets the host veth up with each gateway address as /32 (/128), so the pod's ARP
// or neighbour solicitation for its gateway is answered without proxying, routes each pod address
// to the veth, and turns on forwarding with rp_filter off on the veth.
func configureHost(node *netlink.Handle, link netlink.Link, addrs []addressing) error {
	name := link.Attrs().Name
	if err := node.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	for _, a := range addrs {
		if err := node.AddrReplace(link, hostOnlyAddr(a.gw)); err != nil {
			return fmt.Errorf("add gateway %s to %s: %w", a.gw, name, err)
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostPrefix(a.ip), Scope: netlink.SCOPE_LINK}
		if err := node.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %s dev %s: %w", a.ip, name, err)
		}
	}
	// /proc/sys/net belongs to the netns of the task that opens it: the node's, where the
	// runtime runs the plugin.
	sysctls := [][2]string{
		{"/proc/sys/net/ipv4/ip_forward", "1"},
		{"/proc/sys/net/ipv4/conf/" + name + "/rp_filter", "0"},
	}
	for _, a := range addrs {
		if a.ip.Is6() {
			sysctls = append(sysctls, [2]string{"/proc/sys/net/ipv6/conf/all/forwarding", "1"})
			break
		}
	}
	for _, s := range sysctls {
		if err := writeSysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	return nil
}

// writeSysctl writes only on a change: flipping forwarding resets other per-device settings.
func writeSysctl(path, value string) error {
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", strings.TrimPrefix(path, "/proc/sys/"), value, err)
	}
	return nil
}

// deleteLink removes a link by name; a missing link is not an error. Deleting one end of a veth
// removes the other and every route through it.
func deleteLink(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
