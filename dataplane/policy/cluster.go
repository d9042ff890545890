package policy

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// podInfo is a live pod: one that can send or receive pod traffic.
type podInfo struct {
	name   types.NamespacedName
	uid    types.UID
	node   string
	addr   netip.Addr
	labels labels.Set
	ports  []v1.ContainerPort // of spec.containers, for named ports
}

// cluster indexes the live pods and the namespaces of one Input.
type cluster struct {
	pods     []podInfo // sorted by namespace/name
	byAddr   []int     // indices into pods, sorted by addr
	byNS     map[string][]int
	nsNames  []string // every namespace with an object or a live pod, sorted
	nsLabels map[string]labels.Set
}

func newCluster(in Input) *cluster {
	c := &cluster{byNS: make(map[string][]int), nsLabels: make(map[string]labels.Set)}
	for _, p := range in.Pods {
		if p == nil || p.Spec.HostNetwork || p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
			continue
		}
		addr, ok := podAddr(p)
		if !ok {
			continue
		}
		var ports []v1.ContainerPort
		for _, ctr := range p.Spec.Containers {
			for _, cp := range ctr.Ports {
				if cp.Protocol == "" {
					cp.Protocol = v1.ProtocolTCP // the API default
				}
				ports = append(ports, cp)
			}
		}
		c.pods = append(c.pods, podInfo{
			name:   types.NamespacedName{Namespace: p.Namespace, Name: p.Name},
			uid:    p.UID,
			node:   p.Spec.NodeName,
			addr:   addr,
			labels: labels.Set(p.Labels),
			ports:  ports,
		})
	}
	// The UID and address only order duplicates, which a consistent cache does not hold, so
	// that even then the result does not depend on the input order.
	slices.SortFunc(c.pods, func(a, b podInfo) int {
		return cmp.Or(cmpName(a.name, b.name), strings.Compare(string(a.uid), string(b.uid)), a.addr.Compare(b.addr))
	})
	c.byAddr = make([]int, len(c.pods))
	for i := range c.pods {
		c.byAddr[i] = i
		c.byNS[c.pods[i].name.Namespace] = append(c.byNS[c.pods[i].name.Namespace], i)
	}
	slices.SortFunc(c.byAddr, func(a, b int) int { return cmp.Or(c.pods[a].addr.Compare(c.pods[b].addr), a-b) })

	nss := slices.DeleteFunc(slices.Clone(in.Namespaces), func(ns *v1.Namespace) bool { return ns == nil })
	slices.SortFunc(nss, func(a, b *v1.Namespace) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(string(a.UID), string(b.UID)))
	})
	for _, ns := range nss {
		if _, dup := c.nsLabels[ns.Name]; dup {
			continue
		}
		set := make(labels.Set, len(ns.Labels)+1)
		maps.Copy(set, ns.Labels)
		// The API server sets this label on every namespace and keeps it right.
		set[v1.LabelMetadataName] = ns.Name
		c.nsLabels[ns.Name] = set
	}
	for ns := range c.byNS {
		if _, ok := c.nsLabels[ns]; !ok {
			c.nsLabels[ns] = labels.Set{v1.LabelMetadataName: ns}
		}
	}
	c.nsNames = slices.Sorted(maps.Keys(c.nsLabels))
	return c
}

// podAddr is the pod's IPv4 address: the first in status.podIPs, else status.podIP.
func podAddr(p *v1.Pod) (netip.Addr, bool) {
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
			return a, true
		}
	}
	if a, err := netip.ParseAddr(p.Status.PodIP); err == nil && a.Is4() {
		return a, true
	}
	return netip.Addr{}, false
}

// podsIn returns the indices of the live pods whose address is in pfx, in address order.
func (c *cluster) podsIn(pfx netip.Prefix) []int {
	start, _ := slices.BinarySearchFunc(c.byAddr, pfx.Addr(), func(i int, a netip.Addr) int {
		return c.pods[i].addr.Compare(a)
	})
	end := start
	for end < len(c.byAddr) && pfx.Contains(c.pods[c.byAddr[end]].addr) {
		end++
	}
	return c.byAddr[start:end]
}

// namedPort appends to dst the ports the pod declares under name for proto.
func (p *podInfo) namedPort(dst []PortRange, name string, proto v1.Protocol, policy types.NamespacedName) []PortRange {
	for _, cp := range p.ports {
		if cp.Name == name && cp.Protocol == proto && cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
			n := uint16(cp.ContainerPort)
			dst = append(dst, PortRange{Protocol: proto, First: n, Last: n, Policy: policy})
		}
	}
	return dst
}
