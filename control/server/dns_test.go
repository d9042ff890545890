package server

import (
	"slices"
	"strings"
	"testing"
)

func TestClusterDNSDefaults(t *testing.T) {
	for _, c := range []struct{ serviceCIDR, flag, want string }{
		{"", "", "10.96.0.10"},
		{"10.43.0.0/16", "", "10.43.0.10"},
		{"10.96.7.0/16", "", "10.96.0.10"}, // the range, not the address written
		{"10.96.0.0/28", "", "10.96.0.10"},
		{"10.96.0.0/16", "10.96.100.53", "10.96.100.53"},
		{"fd00:10:96::/108", "", "fd00:10:96::a"},
	} {
		cfg := Config{ServiceCIDR: c.serviceCIDR, ClusterDNS: c.flag}
		if err := cfg.setDefaults(); err != nil {
			t.Errorf("service CIDR %q, --cluster-dns %q: %v", c.serviceCIDR, c.flag, err)
			continue
		}
		if got := cfg.addons.DNSIP.String(); got != c.want {
			t.Errorf("service CIDR %q, --cluster-dns %q: DNS at %s, want %s", c.serviceCIDR, c.flag, got, c.want)
		}
		if cfg.addons.Domain != DefaultClusterDomain || !slices.Equal(cfg.addons.Upstream, []string{"/etc/resolv.conf"}) {
			t.Errorf("domain %q upstream %q, want the defaults", cfg.addons.Domain, cfg.addons.Upstream)
		}
	}
}

// Bad DNS settings fail the start with an error naming the flag at fault.
func TestClusterDNSInvalid(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want []string
	}{
		{Config{ClusterDNS: "10.97.0.10"}, []string{"--cluster-dns 10.97.0.10 is outside --service-cidr 10.96.0.0/16"}},
		{Config{ClusterDNS: "dns"}, []string{`--cluster-dns "dns"`}},
		{Config{ClusterDNS: "10.96.0.1"}, []string{"--cluster-dns 10.96.0.1", "kubernetes Service"}},
		{Config{ClusterDNS: "10.96.0.0"}, []string{"--cluster-dns 10.96.0.0", "network address"}},
		{Config{ServiceCIDR: "10.96.0.0/29"}, []string{"--service-cidr 10.96.0.0/29", "give --cluster-dns"}},
		{Config{DisableAddons: []string{"kube-dns"}}, []string{`--disable-addon "kube-dns"`}},
		{Config{UpstreamDNS: []string{"none", "192.0.2.1"}}, []string{"--upstream-dns"}},
		{Config{UpstreamDNS: []string{"resolver.example"}}, []string{"--upstream-dns", "resolver.example"}},
		{Config{ClusterDomain: "cluster_local"}, []string{`--cluster-domain "cluster_local"`}},
	} {
		err := c.cfg.setDefaults()
		if err == nil {
			t.Errorf("%+v accepted", c.cfg)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %q does not say %q", c.cfg, err, w)
			}
		}
	}
}

func TestUpstreamAndDisabledAccepted(t *testing.T) {
	cfg := Config{UpstreamDNS: []string{"none"}, DisableAddons: []string{"coredns"}}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.addons.Upstream != nil {
		t.Errorf("--upstream-dns none: upstream %q, want none", cfg.addons.Upstream)
	}
}
