package addons

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"k8s.io/apimachinery/pkg/util/validation"
)

// CoreDNSImage is the image the DNS pods run: upstream's name, so manifests
// written for other clusters find it, made on every node by the agent from
// the coredns beside capstan (tools/coredns builds that version).
const CoreDNSImage = "registry.k8s.io/coredns/coredns:v1.15.0"

// DefaultUpstream is where names outside the cluster go unless
// --upstream-dns says otherwise: the resolvers of the node a DNS pod runs
// on (its dnsPolicy is Default, so it has the node's resolv.conf).
const DefaultUpstream = "/etc/resolv.conf"

// NoUpstream is the --upstream-dns value for a cluster with no resolver
// beyond it: names outside the cluster then fail at once.
const NoUpstream = "none"

// Config is what the add-ons are rendered with.
type Config struct {
	// DNSIP is the kube-dns Service's ClusterIP.
	DNSIP netip.Addr
	// Domain is the cluster's DNS domain, e.g. cluster.local.
	Domain string
	// Upstream is where CoreDNS forwards names outside the cluster: resolver
	// addresses (IP or IP:port) or a resolv.conf path. Empty forwards
	// nothing: such names get NXDOMAIN at once.
	Upstream []string
	// Image is CoreDNS's image; empty means CoreDNSImage.
	Image string
}

// ParseUpstream turns the values of --upstream-dns into Config.Upstream:
// none given means DefaultUpstream, "none" alone means no forwarding, and
// anything else must be resolver addresses.
func ParseUpstream(values []string) ([]string, error) {
	switch {
	case len(values) == 0:
		return []string{DefaultUpstream}, nil
	case slices.Equal(values, []string{NoUpstream}):
		return nil, nil
	}
	out := make([]string, 0, len(values))
	for _, v := range values {
		if v == NoUpstream {
			return nil, fmt.Errorf("--upstream-dns %s: %q cannot be given with addresses", strings.Join(values, ","), NoUpstream)
		}
		if err := checkUpstream(v); err != nil {
			return nil, fmt.Errorf("--upstream-dns: %w", err)
		}
		out = append(out, v)
	}
	return out, nil
}

// checkUpstream accepts what CoreDNS's forward plugin takes and the
// Corefile can hold as one word: an IP, an IP:port, or an absolute path.
func checkUpstream(v string) error {
	if _, err := netip.ParseAddr(v); err == nil {
		return nil
	}
	if _, err := netip.ParseAddrPort(v); err == nil {
		return nil
	}
	if filepath.IsAbs(v) && !strings.ContainsAny(v, " \t\n{}\"'#") {
		return nil
	}
	return fmt.Errorf("%q: want an IP address, IP:port, a resolv.conf path, or %q", v, NoUpstream)
}

// complete fills in the default image and refuses settings that would
// render a broken manifest: everything here lands in YAML and in the
// Corefile unquoted.
func (c *Config) complete() error {
	if !c.DNSIP.IsValid() {
		return errors.New("cluster DNS address not set")
	}
	if errs := validation.IsDNS1123Subdomain(c.Domain); len(errs) > 0 {
		return fmt.Errorf("cluster domain %q: %s", c.Domain, strings.Join(errs, "; "))
	}
	if c.Image == "" {
		c.Image = CoreDNSImage
	}
	if _, err := reference.ParseDockerRef(c.Image); err != nil {
		return fmt.Errorf("CoreDNS image %q: %w", c.Image, err)
	}
	for _, u := range c.Upstream {
		if err := checkUpstream(u); err != nil {
			return fmt.Errorf("upstream DNS: %w", err)
		}
	}
	return nil
}
