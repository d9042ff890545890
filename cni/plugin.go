// Package cni is the capstan-cni plugin: it wires a pod into its node with a veth pair and
// routes, takes the pod's addresses from the node's podCIDR through package ipam, and leaves an
// endpoint record (see Endpoint) for the node's dataplane daemon.
//
// Addressing, for podCIDR 10.244.1.0/24 and a pod given 10.244.1.5:
//
//	pod netns:  eth0 10.244.1.5/32; 10.244.1.1 dev eth0 scope link; default via 10.244.1.1 dev eth0
//	node netns: capXXXXXXXXXXX 10.244.1.1/32 (on every pod veth); 10.244.1.5 dev capXXX scope link
//
// The gateway is the first address of the CIDR and sits on every host veth, so the pod's ARP for
// it is answered by the veth itself. IPv6 CIDRs get the same treatment with /128s.
package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/capstan-net/capstan/ipam"
)

// CodeExhausted is the CNI error code for "no free address in the pod CIDR". The spec has no
// well-known code for it and leaves 100 and up to plugins. The message reads
// "no free address in <cidr>".
const CodeExhausted uint = 101

// Plugin holds what the CNI entry points share. Its methods match skel.CNIFuncs.
type Plugin struct {
	log *slog.Logger
}

// New returns a plugin logging to log (the runtime keeps the plugin's stderr); nil discards.
func New(log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{log: log}
}

func cniError(code uint, format string, a ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, a...), "")
}

func invalidConfig(format string, a ...any) *types.Error {
	return cniError(types.ErrInvalidNetworkConfig, format, a...)
}

// asCNIError keeps an existing *types.Error and gives anything else a code: ipam's sentinels
// their own, the rest ErrInternal.
func asCNIError(err error) error {
	var e *types.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		return e
	case errors.Is(err, ipam.ErrExhausted):
		return cniError(CodeExhausted, "%v", err)
	case errors.Is(err, ipam.ErrBusy):
		return cniError(types.ErrTryAgainLater, "%v", err)
	}
	return cniError(types.ErrInternal, "%v", err)
}

func (p *Plugin) openStore(conf *NetConf) (*ipam.Store, error) {
	s, err := ipam.Open(conf.DataDir, ipam.Options{Logger: p.log})
	if err != nil {
		return nil, cniError(types.ErrIOFailure, "%v", err)
	}
	return s, nil
}

// Add wires the container into the node. Every step is idempotent, so a repeated ADD for the
// same attachment returns the same result; when a step fails, what this call created is undone.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	pa, err := parseArgs(args.Args)
	if err != nil {
		return err
	}
	if args.Netns == "" {
		return cniError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is empty")
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return cniError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %q: %v", args.Netns, err)
	}
	defer podNS.Close()
	store, err := p.openStore(conf)
	if err != nil {
		return err
	}

	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	log := p.log.With("container", args.ContainerID, "ifname", args.IfName)
	var undo []func() error
	done := false
	defer func() {
		if done {
			return
		}
		for _, f := range slices.Backward(undo) {
			if err := f(); err != nil {
				log.Error("undo failed ADD", "err", err)
			}
		}
	}()

	var addrs []addressing
	for _, cidr := range conf.cidrs {
		ip, fresh, err := store.Allocate(cidr, att)
		if err != nil {
			return asCNIError(err)
		}
		if fresh {
			undo = append(undo, func() error {
				_, err := store.Release(att)
				return err
			})
		}
		addrs = append(addrs, addressing{ip: ip, gw: ipam.Gateway(cidr)})
	}

	node, err := netlink.NewHandle()
	if err != nil {
		return asCNIError(fmt.Errorf("netlink: %w", err))
	}
	defer node.Close()
	pod, err := netlink.NewHandleAt(netns.NsHandle(int(podNS.Fd())))
	if err != nil {
		return asCNIError(fmt.Errorf("netlink in pod netns: %w", err))
	}
	defer pod.Close()

	hostName := HostIfName(args.ContainerID, args.IfName)
	v, err := ensureVeth(node, pod, int(podNS.Fd()), hostName, args.IfName, ownerAlias(conf.Name, att), conf.MTU)
	if err != nil {
		return asCNIError(err)
	}
	if v.created {
		undo = append(undo, func() error { return deleteLink(node, hostName) })
	}
	if err := configurePod(pod, v.pod, addrs); err != nil {
		return asCNIError(err)
	}
	if err := configureHost(node, v.host, addrs); err != nil {
		return asCNIError(err)
	}

	ep := &Endpoint{
		ContainerID:  args.ContainerID,
		IfName:       args.IfName,
		HostIfName:   hostName,
		HostIfIndex:  v.host.Attrs().Index,
		HostMAC:      v.host.Attrs().HardwareAddr.String(),
		PodMAC:       v.pod.Attrs().HardwareAddr.String(),
		Netns:        args.Netns,
		PodNamespace: pa.Namespace,
		PodName:      pa.Name,
		PodUID:       pa.UID,
	}
	for _, a := range addrs {
		ep.PodIPs = append(ep.PodIPs, a.ip)
	}
	if ep.NetnsCookie, err = netnsCookie(podNS); err != nil {
		log.Warn("no netns cookie; the socket load balancer keys the pod by its netns", "err", err)
	}
	if err := writeEndpoint(conf.EndpointsDir, ep); err != nil {
		return asCNIError(err)
	}
	done = true
	log.Info("added", "hostIf", hostName, "ips", ep.PodIPs)

	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostName, Mac: ep.HostMAC, Mtu: conf.MTU},
			{Name: args.IfName, Mac: ep.PodMAC, Mtu: conf.MTU, Sandbox: args.Netns},
		},
	}
	for _, a := range addrs {
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: current.Int(1),
			Address:   *hostPrefix(a.ip),
			Gateway:   a.gw.AsSlice(),
		})
		res.Routes = append(res.Routes, &types.Route{Dst: *defaultDst(a.gw), GW: a.gw.AsSlice()})
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// Del undoes ADD: the host veth (which takes the pod end and the host routes with it), the
// endpoint record and the addresses. It needs neither the pod netns nor a prevResult, keeps
// going past errors and succeeds when there is nothing left to remove.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := decodeConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := conf.validatePaths(); err != nil {
		return err
	}
	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	var errs []error
	if node, err := netlink.NewHandle(); err != nil {
		errs = append(errs, fmt.Errorf("netlink: %w", err))
	} else {
		errs = append(errs, deleteLink(node, HostIfName(args.ContainerID, args.IfName)))
		node.Close()
	}
	errs = append(errs, removeEndpoint(conf.EndpointsDir, args.ContainerID, args.IfName))
	// Addresses go last, so none is handed out again while a route to the old veth could remain.
	// A store that is not there holds none: removing Capstan from the node took it, and a DEL
	// that comes after must not make it again.
	if _, err := os.Stat(conf.DataDir); errors.Is(err, os.ErrNotExist) {
		p.log.Info("deleted", "container", args.ContainerID, "ifname", args.IfName, "released", "none (no address store)")
	} else if store, err := p.openStore(conf); err != nil {
		errs = append(errs, err)
	} else if freed, err := store.Release(att); err != nil {
		errs = append(errs, fmt.Errorf("release addresses: %w", err))
	} else {
		p.log.Info("deleted", "container", args.ContainerID, "ifname", args.IfName, "released", freed)
	}
	return joinCNIErrors(errs)
}

// joinCNIErrors returns nil, the only error as is, or all of them under the first one's code.
func joinCNIErrors(errs []error) error {
	errs = slices.DeleteFunc(errs, func(e error) bool { return e == nil })
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return asCNIError(errs[0])
	}
	first := asCNIError(errs[0]).(*types.Error)
	return cniError(first.Code, "%v", errors.Join(errs...))
}

// Check compares the attachment with the prevResult of its ADD: both veth ends, the pod's
// addresses and routes, the host route, the IPAM reservation and the endpoint record.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return invalidConfig("CHECK needs a prevResult")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return cniError(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return cniError(types.ErrUnknownContainer, "CNI_NETNS %q: %v", args.Netns, err)
	}
	defer podNS.Close()
	store, err := p.openStore(conf)
	if err != nil {
		return err
	}

	hostName := HostIfName(args.ContainerID, args.IfName)
	podIf := -1
	var want []netip.Addr
	for i, itf := range prev.Interfaces {
		if itf.Sandbox != "" && itf.Name == args.IfName {
			podIf = i
		}
	}
	if podIf < 0 {
		return cniError(types.ErrInternal, "prevResult has no interface %s in a sandbox", args.IfName)
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface == podIf {
			a, ok := netip.AddrFromSlice(ipc.Address.IP)
			if !ok {
				return cniError(types.ErrDecodingFailure, "prevResult address %v", ipc.Address)
			}
			want = append(want, a.Unmap())
		}
	}
	slices.SortFunc(want, netip.Addr.Compare)

	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }

	var addrs []addressing
	for _, a := range want {
		i := slices.IndexFunc(conf.cidrs, func(c netip.Prefix) bool { return c.Contains(a) })
		if i < 0 {
			bad("address %s is outside podCIDRs %v", a, conf.cidrs)
			continue
		}
		addrs = append(addrs, addressing{ip: a, gw: ipam.Gateway(conf.cidrs[i])})
	}
	if len(want) != len(conf.cidrs) {
		bad("prevResult has %d pod addresses for %d pod CIDRs", len(want), len(conf.cidrs))
	}

	held, err := store.Lookup(args.ContainerID)
	if err != nil {
		return asCNIError(err)
	}
	var reserved []netip.Addr
	for _, al := range held {
		if al.IfName == args.IfName {
			reserved = append(reserved, al.IP)
		}
	}
	if !slices.Equal(reserved, want) {
		bad("ipam reserves %v for %s/%s, prevResult says %v", reserved, args.ContainerID, args.IfName, want)
	}

	node, err := netlink.NewHandle()
	if err != nil {
		return asCNIError(fmt.Errorf("netlink: %w", err))
	}
	defer node.Close()
	pod, err := netlink.NewHandleAt(netns.NsHandle(int(podNS.Fd())))
	if err != nil {
		return asCNIError(fmt.Errorf("netlink in pod netns: %w", err))
	}
	defer pod.Close()

	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	host, err := node.LinkByName(hostName)
	if err != nil {
		bad("host veth %s: %v", hostName, err)
	} else {
		checkHost(host, node, ownerAlias(conf.Name, att), addrs, bad)
	}
	podLink, err := pod.LinkByName(args.IfName)
	if err != nil {
		bad("pod %s: %v", args.IfName, err)
	} else {
		checkPod(podLink, pod, host, prev.Interfaces[podIf].Mac, addrs, bad)
	}

	epPath := filepath.Join(conf.EndpointsDir, EndpointFileName(args.ContainerID, args.IfName))
	if ep, err := ReadEndpoint(epPath); err != nil {
		bad("endpoint record: %v", err)
	} else {
		if ep.HostIfName != hostName || host != nil && ep.HostIfIndex != host.Attrs().Index {
			bad("endpoint record names %s (index %d), want %s", ep.HostIfName, ep.HostIfIndex, hostName)
		}
		got := slices.SortedFunc(slices.Values(ep.PodIPs), netip.Addr.Compare)
		if !slices.Equal(got, want) {
			bad("endpoint record has %v, prevResult %v", got, want)
		}
	}
	if len(problems) > 0 {
		return cniError(types.ErrInternal, "check %s/%s: %s", args.ContainerID, args.IfName, strings.Join(problems, "; "))
	}
	return nil
}

func checkHost(host netlink.Link, node *netlink.Handle, alias string, addrs []addressing, bad func(string, ...any)) {
	name := host.Attrs().Name
	if host.Attrs().Alias != alias {
		bad("host veth %s has alias %q, want %q", name, host.Attrs().Alias, alias)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		bad("host veth %s is down", name)
	}
	for _, a := range addrs {
		if !hasAddr(node, host, a.gw) {
			bad("host veth %s lacks gateway %s", name, a.gw)
		}
		routes, err := retryDump(func() ([]netlink.Route, error) { return node.RouteList(host, family(a.ip)) })
		if err != nil {
			bad("list routes on %s: %v", name, err)
			continue
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return isHostRoute(r, a.ip) && r.Gw == nil }) {
			bad("no route %s dev %s", a.ip, name)
		}
	}
}

func checkPod(link netlink.Link, pod *netlink.Handle, host netlink.Link, mac string, addrs []addressing, bad func(string, ...any)) {
	name := link.Attrs().Name
	if link.Type() != "veth" {
		bad("pod %s is a %s, not a veth", name, link.Type())
	}
	if host != nil && link.Attrs().ParentIndex != host.Attrs().Index {
		bad("pod %s is not the peer of %s", name, host.Attrs().Name)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		bad("pod %s is down", name)
	}
	if mac != "" && !strings.EqualFold(link.Attrs().HardwareAddr.String(), mac) {
		bad("pod %s has MAC %s, prevResult %s", name, link.Attrs().HardwareAddr, mac)
	}
	for _, a := range addrs {
		if !hasAddr(pod, link, a.ip) {
			bad("pod %s lacks %s", name, a.ip)
		}
		routes, err := retryDump(func() ([]netlink.Route, error) { return pod.RouteList(link, family(a.ip)) })
		if err != nil {
			bad("list pod routes: %v", err)
			continue
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return isHostRoute(r, a.gw) }) {
			bad("pod has no route to gateway %s dev %s", a.gw, name)
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			gw, _ := netip.AddrFromSlice(r.Gw)
			return isDefault(r) && gw.Unmap() == a.gw
		}) {
			bad("pod has no default route via %s dev %s", a.gw, name)
		}
	}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func hasAddr(h *netlink.Handle, link netlink.Link, want netip.Addr) bool {
	list, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, family(want)) })
	if err != nil {
		return false
	}
	return slices.ContainsFunc(list, func(a netlink.Addr) bool {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, bits := a.Mask.Size()
		return ip.Unmap() == want && ones == bits
	})
}

func isHostRoute(r netlink.Route, dst netip.Addr) bool {
	if r.Dst == nil {
		return false
	}
	ip, _ := netip.AddrFromSlice(r.Dst.IP)
	ones, bits := r.Dst.Mask.Size()
	return ip.Unmap() == dst && ones == bits
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// GC removes what belongs to attachments missing from cni.dev/valid-attachments: host veths
// carrying this network's alias, endpoint records and IPAM reservations. Without the key (or
// with null) it does nothing, since it cannot tell what is still in use; an empty list means
// nothing is. It keeps going past errors.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := decodeConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := conf.validatePaths(); err != nil {
		return err
	}
	if conf.ValidAttachments == nil {
		p.log.Warn("GC without cni.dev/valid-attachments: nothing removed")
		return nil
	}
	valid := map[ipam.Attachment]bool{}
	var validList []ipam.Attachment
	for _, a := range conf.ValidAttachments {
		att := ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName}
		valid[att] = true
		validList = append(validList, att)
	}

	var errs []error
	node, err := netlink.NewHandle()
	if err != nil {
		return asCNIError(fmt.Errorf("netlink: %w", err))
	}
	defer node.Close()
	stale := func(a ipam.Attachment, why string) {
		if valid[a] {
			return
		}
		p.log.Info("gc", "container", a.ContainerID, "ifname", a.IfName, "found", why)
		errs = append(errs, deleteLink(node, HostIfName(a.ContainerID, a.IfName)))
		errs = append(errs, removeEndpoint(conf.EndpointsDir, a.ContainerID, a.IfName))
	}

	links, err := retryDump(node.LinkList)
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range links {
		network, a, ok := parseOwnerAlias(l.Attrs().Alias)
		if !ok || network != conf.Name || l.Type() != "veth" {
			continue
		}
		if l.Attrs().Name != HostIfName(a.ContainerID, a.IfName) {
			continue // not a name this plugin gives
		}
		stale(a, "veth")
	}
	eps, err := ListEndpoints(conf.EndpointsDir)
	errs = append(errs, err)
	for path, ep := range eps {
		a := ipam.Attachment{ContainerID: ep.ContainerID, IfName: ep.IfName}
		if filepath.Base(path) != EndpointFileName(a.ContainerID, a.IfName) {
			errs = append(errs, fmt.Errorf("endpoint record %s names %s", path, a))
			continue
		}
		stale(a, "endpoint record")
	}
	if store, err := p.openStore(conf); err != nil {
		errs = append(errs, err)
	} else {
		freed, err := store.GC(validList)
		errs = append(errs, err)
		for _, al := range freed {
			stale(al.Attachment, "address "+al.IP.String())
		}
	}
	return joinCNIErrors(errs)
}

// Status reports whether an ADD could succeed now: the config names a usable podCIDR with a free
// address, and dataDir and endpointsDir are writable. Otherwise the error has code 50.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := decodeConfig(args.StdinData)
	if err != nil {
		return err
	}
	unavailable := func(err error) error {
		var e *types.Error
		if errors.As(err, &e) {
			return cniError(types.ErrPluginNotAvailable, "%s", e.Msg)
		}
		return cniError(types.ErrPluginNotAvailable, "%v", err)
	}
	if err := conf.validatePaths(); err != nil {
		return unavailable(err)
	}
	if err := conf.validateCIDRs(); err != nil {
		return unavailable(err)
	}
	for _, dir := range []string{conf.DataDir, conf.EndpointsDir} {
		if err := checkWritable(dir); err != nil {
			return unavailable(err)
		}
	}
	store, err := p.openStore(conf)
	if err != nil {
		return unavailable(err)
	}
	for _, cidr := range conf.cidrs {
		free, err := store.Free(cidr)
		if errors.Is(err, ipam.ErrBusy) {
			return asCNIError(err)
		}
		if err != nil {
			return unavailable(err)
		}
		if free == 0 {
			return unavailable(fmt.Errorf("%w in %s", ipam.ErrExhausted, cidr))
		}
	}
	return nil
}

func checkWritable(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%s is not writable: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".status-")
	if err != nil {
		return fmt.Errorf("%s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}
