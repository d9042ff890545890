package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

	"github.com/capstan-net/capstan/dataplane"
)

// chainPrefix starts every chain this package creates, so a kube-proxy (whose chains start
// with KUBE-) can run beside it and Cleanup can find all of ours by name alone.
const chainPrefix = "CAPSTAN-"

// Chains that exist whatever the State holds. The nat and filter tables have separate chain
// namespaces, so CAPSTAN-SERVICES and CAPSTAN-NODEPORTS exist in both, with different jobs.
const (
	// nat: entry from PREROUTING and OUTPUT; one rule per service frontend.
	chainServices = chainPrefix + "SERVICES"
	// nat: NodePort frontends, reached from the end of chainServices for node addresses.
	// filter: NodePort frontends to reject or drop, reached from chainExternalServices.
	chainNodePorts = chainPrefix + "NODEPORTS"
	// nat: sets masqMark; what carries it is masqueraded on the way out.
	chainMarkMasq = chainPrefix + "MARK-MASQ"
	// nat: entry from POSTROUTING; masquerades marked packets (and pod egress, optionally).
	chainPostrouting = chainPrefix + "POSTROUTING"
	// nat: pod traffic leaving the cluster, masqueraded when Config.Masquerade is set.
	chainMasqPods = chainPrefix + "MASQ-PODS"
	// filter: frontends of external IPs, load-balancer IPs and NodePorts that must refuse
	// new connections (no endpoints) or drop them (no local endpoints with the Local policy).
	chainExternalServices = chainPrefix + "EXTERNAL-SERVICES"
	// filter: lets forwarded service traffic through a FORWARD policy of DROP.
	chainForward = chainPrefix + "FORWARD"
)

// Per-service chain prefixes. Each is followed by hashLen characters of a hash, which keeps
// the name under iptables' limit of 28 characters.
const (
	// SVC chooses among the targets of the ClusterIPs.
	prefixSVC = chainPrefix + "SVC-"
	// XLB chooses among the targets of the external frontends, when they differ from the
	// ClusterIP targets (externalTrafficPolicy Local or internalTrafficPolicy Local).
	prefixXLB = chainPrefix + "XLB-"
	// EXT is where external frontends enter: it decides masquerading and which of SVC and XLB
	// serves the packet.
	prefixEXT = chainPrefix + "EXT-"
	// SEP DNATs to one endpoint of one service port.
	prefixSEP = chainPrefix + "SEP-"
)

const (
	hashLen      = 16
	maxChainName = 28 // XT_EXTENSION_MAXNAMELEN less the terminating NUL
)

// masqMark is the packet mark bit meaning "masquerade on the way out". kube-proxy uses 0x4000
// and the eBPF mode no marks at all; a bit of our own lets both proxies share a node without
// one clearing the other's decisions.
const masqMark = "0x10000"

// hashName is a short, stable, chain-name-safe digest of s.
func hashName(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:hashLen]
}

// serviceChains names the per-service chains of one service port.
type serviceChains struct {
	svc, xlb, ext string
}

func chainsFor(name dataplane.ServicePortName) serviceChains {
	// The name already carries the protocol, so TCP and UDP ports of one service differ.
	h := hashName(name.String())
	return serviceChains{svc: prefixSVC + h, xlb: prefixXLB + h, ext: prefixEXT + h}
}

// sepChain names the chain of one endpoint of one service port. The service is part of the
// hash so each service keeps its own affinity list even when endpoints are shared.
func sepChain(name dataplane.ServicePortName, t dataplane.Target) string {
	return prefixSEP + hashName(name.String()+"|"+netipAddrPort(t).String())
}

// ours reports whether a chain name belongs to this package.
func ours(chain string) bool { return strings.HasPrefix(chain, chainPrefix) }
