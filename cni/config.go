package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/capstan-net/capstan/ipam"
)

// PluginType is the "type" of capstan-cni entries in a network configuration list.
const PluginType = "capstan-cni"

const (
	defaultMTU = 1500
	minMTU     = 68
	maxMTU     = 65535
)

// NetConf is the plugin's entry in a network configuration list. The node agent writes one per
// node, so every path comes from here and nothing is global:
//
//	{"cniVersion":"1.1.0","name":"capstan","plugins":[{"type":"capstan-cni",
//	  "podCIDR":"10.244.1.0/24",
//	  "dataDir":"/var/lib/capstan/nodes/node-1/ipam",
//	  "endpointsDir":"/run/capstan/node-1/endpoints",
//	  "mtu":1500}]}
//
// For dual stack, podCIDRs lists one CIDR per family (podCIDR, if also set, must be one of them).
type NetConf struct {
	types.PluginConf
	PodCIDR      string   `json:"podCIDR,omitempty"`
	PodCIDRs     []string `json:"podCIDRs,omitempty"`
	DataDir      string   `json:"dataDir,omitempty"`
	EndpointsDir string   `json:"endpointsDir,omitempty"`
	MTU          int      `json:"mtu,omitempty"`

	// cidrs is the parsed pod CIDR list, IPv4 first.
	cidrs []netip.Prefix
}

// CIDRs returns the parsed pod CIDRs, IPv4 first. Valid after a successful parse.
func (c *NetConf) CIDRs() []netip.Prefix { return c.cidrs }

// decodeConfig unmarshals stdin data and the prevResult in it, without validating the fields.
func decodeConfig(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode network config", err.Error())
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode prevResult", err.Error())
	}
	if conf.MTU == 0 {
		conf.MTU = defaultMTU
	}
	return conf, nil
}

// parseConfig decodes and validates; failures are CNI errors with code 6 or 7.
func parseConfig(data []byte) (*NetConf, error) {
	conf, err := decodeConfig(data)
	if err != nil {
		return nil, err
	}
	if err := conf.validatePaths(); err != nil {
		return nil, err
	}
	if err := conf.validateCIDRs(); err != nil {
		return nil, err
	}
	return conf, nil
}

func (c *NetConf) validatePaths() error {
	if c.Type != "" && c.Type != PluginType {
		return invalidConfig("type %q is not %q", c.Type, PluginType)
	}
	for _, p := range []struct{ key, val string }{{"dataDir", c.DataDir}, {"endpointsDir", c.EndpointsDir}} {
		if p.val == "" {
			return invalidConfig("%s is missing", p.key)
		}
		if !filepath.IsAbs(p.val) {
			return invalidConfig("%s %q is not an absolute path", p.key, p.val)
		}
	}
	if filepath.Clean(c.DataDir) == filepath.Clean(c.EndpointsDir) {
		return invalidConfig("dataDir and endpointsDir are both %q", c.DataDir)
	}
	if c.MTU < minMTU || c.MTU > maxMTU {
		return invalidConfig("mtu %d is outside %d-%d", c.MTU, minMTU, maxMTU)
	}
	return nil
}

func (c *NetConf) validateCIDRs() error {
	list := c.PodCIDRs
	if len(list) == 0 {
		if c.PodCIDR == "" {
			return invalidConfig("podCIDR is missing")
		}
		list = []string{c.PodCIDR}
	} else if c.PodCIDR != "" && !containsString(list, c.PodCIDR) {
		return invalidConfig("podCIDR %s is not in podCIDRs %v", c.PodCIDR, c.PodCIDRs)
	}
	var v4, v6 []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return invalidConfig("podCIDR %q: %v", s, err)
		}
		if err := ipam.CheckPrefix(p); err != nil {
			return invalidConfig("podCIDR: %v", err)
		}
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	if len(v4) > 1 || len(v6) > 1 {
		return invalidConfig("podCIDRs %v: at most one CIDR per address family", list)
	}
	c.cidrs = append(v4, v6...)
	return nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if strings.TrimSpace(v) == s {
			return true
		}
	}
	return false
}

// podArgs are the CNI_ARGS keys the plugin records for the node daemon.
type podArgs struct {
	Namespace string
	Name      string
	UID       string
}

// parseArgs reads CNI_ARGS ("K1=V1;K2=V2"). Unknown keys are ignored, as runtimes pass many; a
// pair without "=" is an error (code 4).
func parseArgs(s string) (podArgs, error) {
	var pa podArgs
	if s == "" {
		return pa, nil
	}
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return pa, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", pair), "")
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			pa.Namespace = v
		case "K8S_POD_NAME":
			pa.Name = v
		case "K8S_POD_UID":
			pa.UID = v
		}
	}
	return pa, nil
}
