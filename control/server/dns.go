package server

import (
	"fmt"
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/capstan-net/capstan/control/addons"
)

// dnsOffset places the cluster DNS Service in the service range, at the
// tenth address as kubeadm and k3s do (10.96.0.10 in 10.96.0.0/16).
const dnsOffset = 10

// addonConfig checks the cluster DNS settings and the add-ons named, and
// makes the add-ons' configuration; every add-on is rendered once here, so
// bad settings fail the start before anything runs.
func (c *Config) addonConfig(svc netip.Prefix) (addons.Config, error) {
	if err := addons.CheckNames(c.DisableAddons); err != nil {
		return addons.Config{}, err
	}
	if errs := validation.IsDNS1123Subdomain(c.ClusterDomain); len(errs) > 0 {
		return addons.Config{}, fmt.Errorf("--cluster-domain %q: %s", c.ClusterDomain, strings.Join(errs, "; "))
	}
	ip, err := clusterDNS(c.ClusterDNS, svc)
	if err != nil {
		return addons.Config{}, err
	}
	upstream, err := addons.ParseUpstream(c.UpstreamDNS)
	if err != nil {
		return addons.Config{}, err
	}
	ac := addons.Config{DNSIP: ip, Domain: c.ClusterDomain, Upstream: upstream}
	for _, name := range addons.Names() {
		if _, err := addons.Render(name, ac); err != nil {
			return addons.Config{}, err
		}
	}
	return ac, nil
}

// clusterDNS is the kube-dns Service's address: the flag's, which must be
// an address of the service range other than its network address and the
// kubernetes Service's, else the range's tenth.
func clusterDNS(flag string, svc netip.Prefix) (netip.Addr, error) {
	svc = svc.Masked()
	if flag == "" {
		ip := svc.Addr()
		for range dnsOffset {
			ip = ip.Next()
		}
		if !svc.Contains(ip) {
			return netip.Addr{}, fmt.Errorf("--service-cidr %s has no tenth address for the cluster DNS; give --cluster-dns", svc)
		}
		return ip, nil
	}
	ip, err := netip.ParseAddr(flag)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("--cluster-dns %q: want an IP address", flag)
	}
	switch {
	case !svc.Contains(ip):
		return netip.Addr{}, fmt.Errorf("--cluster-dns %s is outside --service-cidr %s: the kube-dns Service's ClusterIP must be in the range", ip, svc)
	case ip == svc.Addr():
		return netip.Addr{}, fmt.Errorf("--cluster-dns %s is the network address of --service-cidr %s", ip, svc)
	case ip == svc.Addr().Next():
		return netip.Addr{}, fmt.Errorf("--cluster-dns %s is the kubernetes Service's address (the first of --service-cidr %s)", ip, svc)
	}
	return ip, nil
}
