package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"

	"github.com/capstan-net/capstan/internal/cgroup2"
)

// NodeCgroupDir is the node's cgroup v2 directory, where pods' cgroups are
// made (runc joins the v2 hierarchy on hybrid hosts too) and the socket
// load balancer attaches: under the cgroup2 mount, whether that is
// /sys/fs/cgroup or the unified hierarchy of a hybrid host.
func NodeCgroupDir(root string) (string, error) {
	mount, err := cgroup2.Root()
	if err != nil {
		return "", fmt.Errorf("agent: %w; the socket load balancer needs one", err)
	}
	dir := filepath.Join(mount, root)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("node cgroup: %w", err)
	}
	return dir, nil
}

// DetectNodeIP picks the node's address: the source address of the
// default route, else the first global IPv4 address of an up interface.
func DetectNodeIP() (net.IP, error) {
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if r.Src != nil {
				return r.Src, nil
			}
			if link, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				if addrs, err := netlink.AddrList(link, netlink.FAMILY_V4); err == nil && len(addrs) > 0 {
					return addrs[0].IP, nil
				}
			}
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP, nil
			}
		}
	}
	return nil, errors.New("agent: cannot find the node's IP address; set --node-ip")
}
