package main

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/dataplane/proxyhealth"
	"github.com/capstan-net/capstan/internal/cgroup2"
)

// addDataplaneFlags registers the node dataplane's settings: the same
// names and defaults on `capstan agent` and `capstan dataplane`.
func addDataplaneFlags(f *pflag.FlagSet) {
	f.String("mode", daemon.ModeEBPF, "who implements Services: ebpf, iptables (kube-proxy-style rules) or none (an external kube-proxy)")
	f.String("routing", daemon.RoutingNative, "how pods reach other nodes' pods: native (a route per node) or vxlan")
	f.String("lb-algorithm", "random", "Service load-balancing algorithm without an lb.capstan.io/algorithm annotation: random, round-robin, least-conn, source-hash")
	f.Uint32("maglev-seed", 0, "source-hash seed; the same on every node of a cluster")
	f.String("bpf-pin-dir", "", "bpf filesystem directory for the dataplane's maps and links (default "+daemon.DefaultPinRoot+"/<node>)")
	f.StringSlice("devices", nil, "node devices that get the NodePort programs (default: those holding the node's InternalIPs)")
	f.String("cgroup-mount", "/sys/fs/cgroup", "where the cgroup filesystem is mounted; the v2 hierarchy is there or in its unified/ directory")
	f.String("socket-lb-cgroup", "", "cgroup v2 directory, relative to the v2 hierarchy, whose processes get the socket load balancer (default: the agent's pods; / for capstan dataplane)")
	f.String("snat-addr", "", "source address for externalIP and load-balancer traffic forwarded to another node's backend (default: the node's first IPv4 address)")
	f.String("cluster-cidr", "10.244.0.0/16", "the cluster's pod range; with --masquerade, pod traffic leaving it is SNATed")
	f.String("service-cidr", "", "the Service range, never masqueraded (default: the cluster's ServiceCIDR object)")
	f.Bool("masquerade", true, "SNAT pod traffic leaving the cluster to the node address, in eBPF")
	f.Int("mtu", 0, "pods' interface MTU (default 1500, 1450 with --routing vxlan)")
	f.Int("service-entries", 0, "map size: service frontends (default 65536)")
	f.Int("backend-entries", 0, "map size: service backends (default 65536)")
	f.Int("connections", 0, "map size: tracked connections (default 524288)")
	f.Int("policy-endpoints", 0, "map size: pods NetworkPolicy isolates (default 4096)")
	f.Int("policy-rules", 0, "map size: NetworkPolicy peer entries over all pods (default 65536)")
	f.Int("policy-ports", 0, "map size: NetworkPolicy port entries (default 65536)")
	f.Duration("min-sync-interval", 0, "least time between syncs (default 250ms in eBPF mode, 1s in iptables and none modes)")
	f.Duration("sync-period", 0, "full resync period (default 30s)")
	f.String("metrics-addr", proxyhealth.StatusAddr, "serve Prometheus /metrics and kube-proxy's /proxyMode here (host:port; empty: not at all; in mode none kube-proxy keeps its default)")
	f.String("healthz-addr", proxyhealth.HealthzAddr, "serve kube-proxy's /healthz and /livez here, in the node's network namespace (host:port; empty: not at all; in mode none kube-proxy keeps its default)")
}

// dataplaneConfig reads the flags addDataplaneFlags registered. The
// socket load balancer's cgroup is left to the caller (cgroupDir).
func dataplaneConfig(v *viper.Viper) (daemon.Config, error) {
	cfg := daemon.Config{
		Mode:             v.GetString("mode"),
		Routing:          v.GetString("routing"),
		DefaultAlgorithm: v.GetString("lb-algorithm"),
		MaglevSeed:       v.GetUint32("maglev-seed"),
		PinDir:           v.GetString("bpf-pin-dir"),
		Devices:          v.GetStringSlice("devices"),
		Masquerade:       v.GetBool("masquerade"),
		ServiceEntries:   v.GetInt("service-entries"),
		BackendEntries:   v.GetInt("backend-entries"),
		Connections:      v.GetInt("connections"),
		PolicyEndpoints:  v.GetInt("policy-endpoints"),
		PolicyRules:      v.GetInt("policy-rules"),
		PolicyPorts:      v.GetInt("policy-ports"),
		MinSyncInterval:  v.GetDuration("min-sync-interval"),
		SyncPeriod:       v.GetDuration("sync-period"),
		MetricsAddr:      v.GetString("metrics-addr"),
		HealthzAddr:      v.GetString("healthz-addr"),
		CNI:              daemon.CNIConfig{MTU: v.GetInt("mtu")},
	}
	if cfg.CNI.MTU != 0 && (cfg.CNI.MTU < 576 || cfg.CNI.MTU > 65535) {
		return cfg, fmt.Errorf("--mtu %d: want 576 to 65535", cfg.CNI.MTU)
	}
	var err error
	for flag, dst := range map[string]*netip.Prefix{"cluster-cidr": &cfg.ClusterCIDR, "service-cidr": &cfg.ServiceCIDR} {
		if s := v.GetString(flag); s != "" {
			if *dst, err = netip.ParsePrefix(s); err != nil || !dst.Addr().Is4() {
				return cfg, fmt.Errorf("--%s %q: want an IPv4 CIDR", flag, s)
			}
		}
	}
	if s := v.GetString("snat-addr"); s != "" {
		if cfg.SNATAddr, err = netip.ParseAddr(s); err != nil || !cfg.SNATAddr.Is4() {
			return cfg, fmt.Errorf("--snat-addr %q: want an IPv4 address", s)
		}
	}
	cfg.Masquerade = cfg.Masquerade && cfg.ClusterCIDR.IsValid()
	return cfg, nil
}

// cgroupDir is the socket load balancer's cgroup: rel, under the v2
// hierarchy of the cgroup filesystem at mount.
func cgroupDir(mount, rel string) (string, error) {
	root, err := cgroup2.In(mount)
	if err != nil {
		return "", fmt.Errorf("--cgroup-mount: %w", err)
	}
	return filepath.Join(root, rel), nil
}
