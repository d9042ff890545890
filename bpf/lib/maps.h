/* Map and value layouts shared by all programs. dataplane/ebpf mirrors these through bpf2go's
 * generated types; change both together. Every map is pinned by name, so the three objects
 * (sock, tc_pod, tc_node) loaded with one pin directory share one set of maps. The max_entries
 * below are placeholders: Go sets the real sizes on the CollectionSpec. */
#pragma once

#include "common.h"

enum lb_algo {
	LB_RANDOM = 0,
	LB_ROUND_ROBIN = 1,
	LB_LEAST_CONN = 2,
	LB_MAGLEV = 3,
};

enum svc_flags {
	/* externalTrafficPolicy Local: keep the client address, slots hold local backends only. */
	SVC_F_LOCAL = 1 << 0,
	/* sessionAffinity ClientIP; the timeout is svc_val.affinity_timeout seconds. */
	SVC_F_AFFINITY = 1 << 1,
};

enum backend_flags {
	/* Terminating: existing connections keep it, new ones never pick it. */
	BE_F_TERMINATING = 1 << 0,
};

/* A service frontend. NodePorts use addr 0 and match any address in node_addrs. */
struct svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 scope;
};

/* svc_key.scope. A frontend with externalTrafficPolicy Local has its local endpoints in the
 * SVC_SCOPE_ALL entry and, for traffic from this node and its pods (which kube-proxy sends to
 * any endpoint of the cluster), all of them in the SVC_SCOPE_INTERNAL entry. */
enum {
	SVC_SCOPE_ALL = 0,
	SVC_SCOPE_INTERNAL = 1,
};

struct svc_val {
	__u32 id;
	/* Slots [0, count) are selectable; [count, members) hold terminating backends so the
	 * service still owns them (Go rebuilds its references from this after a restart). */
	__u16 count;
	__u16 members;
	__u8 algo;
	__u8 flags;
	__u16 pad;
	__u32 affinity_timeout;
};

struct slot_key {
	__u32 svc_id;
	__u32 slot;
};

struct backend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

/* Conntrack. A translated flow has two entries: DIR_FWD keyed by the tuple as the client sent
 * it, DIR_REPLY keyed by the tuple the backend answers with. */
enum ct_dir {
	CT_DIR_FWD = 0,
	CT_DIR_REPLY = 1,
};

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

enum ct_flags {
	CT_F_REWRITE_SRC = 1 << 0, /* write src_addr:src_port as the source */
	CT_F_REWRITE_DST = 1 << 1, /* write dst_addr:dst_port as the destination */
	CT_F_COUNTED = 1 << 2,     /* holds one least-conn reference on backend_id */
	CT_F_CLOSING = 1 << 3,     /* FIN or RST seen */
	CT_F_MASQ = 1 << 4,        /* a masqueraded pod flow, not a service's */
};

struct ct_entry {
	/* Fires at expiry so a dead flow gives back its least-conn count without a userspace
	 * sweep. Only DIR_FWD entries arm it; it also removes the DIR_REPLY twin. */
	struct bpf_timer timer;
	__u64 expires;
	__be32 src_addr;
	__be32 dst_addr;
	__be16 src_port;
	__be16 dst_port;
	__u32 flags;
	__u32 backend_id;
	__u32 svc_id;
};

struct affinity_key {
	__u32 svc_id;
	__u32 pad;
	__u64 client;
};

struct affinity_val {
	__u32 backend_id;
	__u32 pad;
	__u64 last_used;
};

struct sock_revnat_key {
	__u64 cookie;
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct sock_revnat_val {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct slot_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svc_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

/* Active connections per backend ID, for least-conn. An array: IDs are small and dense. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_conns SEC(".maps");

/* Next round-robin position per service ID. Shared by all CPUs (atomic add) so the rotation
 * is exact, not per-CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rr_state SEC(".maps");

/* One Maglev table per source-hash service. Element 0 holds the table size M, elements
 * 1..M the backend IDs; keeping M inside the table lets Go swap a whole table atomically. */
struct maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct maglev_inner);
} maglev_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 524288);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} affinity4 SEC(".maps");

/* Addresses of this node: a NodePort (svc_key.addr 0) matches only these destinations. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} node_addrs SEC(".maps");

/* Addresses of the cluster's other nodes. Pod traffic to them is not masqueraded, as traffic
 * to this node is not: a UDP reply to a process on another node (which masquerade could not
 * tell from a new flow) must come back from the address the process sent to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} peer_nodes SEC(".maps");

/* Socket LB: backend address seen by a socket -> the service address the application used. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 524288);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_revnat4 SEC(".maps");

/* Socket LB least-conn: socket cookie -> backend ID it counts against. A plain hash, not LRU,
 * because an eviction would leak a count. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 524288);
	__type(key, __u64);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_backend SEC(".maps");

/* A pod on this node: its host-side veth, where bpf_redirect_peer delivers into the pod's
 * netns, and the MACs a routed packet carries on the pod's link (from the host veth to the
 * pod's eth0). */
struct endpoint_info {
	__u32 ifindex;
	__u32 flags; /* none defined yet */
	__u8 pod_mac[ETH_ALEN];
	__u8 host_mac[ETH_ALEN];
};

/* Pod IPv4 address -> endpoint. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* A local pod's network namespace cookie -> its IPv4 address: the socket load balancer keys
 * affinity and source hashing of a pod's unbound sockets by the pod's address, as the packet
 * path does, so both paths agree on a client. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __be32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netns_addrs SEC(".maps");

struct lpm4_key {
	__u32 prefixlen;
	__be32 addr;
};

/* VXLAN routing: remote podCIDR -> the underlay address of the node that owns it. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4_key);
	__type(value, __be32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnel_routes SEC(".maps");

/* Packet counters by reason; dataplane/ebpf names them in the same order. New reasons go at
 * the end, and the map is sized for more so a pinned map stays compatible. */
enum stat_reason {
	STAT_REDIRECT_PEER = 0,  /* pod -> pod on this node, straight into the peer's netns */
	STAT_TUNNEL_ENCAP = 1,   /* pod -> remote pod, handed to the VXLAN device */
	STAT_TUNNEL_DELIVER = 2, /* decapsulated -> pod on this node, into the peer's netns */
	STAT_TUNNEL_HOST = 3,    /* decapsulated -> the stack */
	STAT_MASQ_NEW = 4,       /* new masqueraded flow */
	STAT_MASQ_FAIL = 5,      /* masquerade wanted, no source address or port free */
	STAT_SVC_SNAT_FAIL = 6,  /* service flow dropped: no SNAT port free */
	STAT_SVC_CT_FAIL = 7,    /* service flow dropped: its conntrack entries could not be stored */
	STAT_SVC_NAT_FAIL = 8,   /* service packet dropped: the rewrite failed */
	STAT_SVC_FWD_FAIL = 9,   /* translated packet dropped: TTL expired or MAC rewrite failed */
	STAT_SVC_TO_STACK = 10,  /* translated at a node device, left to the stack (no FIB route) */
	STAT_SVC_NEW = 11,       /* new service flow */
	STAT_CT_TIMER_FAIL = 12, /* a conntrack expiry timer could not be armed */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

static __always_inline void stat_inc(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &reason);

	if (n)
		*n += 1; /* per-CPU: no atomics needed */
}

/* NetworkPolicy. The daemon compiles the policies selecting each local pod into LPM entries:
 * (pod, direction, peer prefix) -> the ports the peer may use, where a port set is itself an
 * LPM of (set, protocol, port prefix). A pod absent from policy_eps, or without the direction's
 * bit, is not isolated in that direction. */
enum pol_dir {
	POL_INGRESS = 0, /* packets entering the pod */
	POL_EGRESS = 1,  /* packets the pod sends */
};

enum pol_ep_flags {
	POL_F_INGRESS = 1 << POL_INGRESS,
	POL_F_EGRESS = 1 << POL_EGRESS,
};

struct pol_ep {
	__u32 flags;
	__u32 pad;
};

/* prefixlen counts from ep: 64 + the peer prefix's bits. */
struct pol_key {
	__u32 prefixlen;
	__be32 ep;
	__u8 dir;
	__u8 pad[3];
	__be32 peer;
};

/* ports_id 0 allows every port (policy_id names one policy granting it); POL_PORTS_DENY is a
 * hole (an ipBlock except) in a shorter prefix; anything else is looked up in policy_ports. */
#define POL_PORTS_DENY 0xffffffffU

struct pol_val {
	__u32 ports_id;
	__u32 policy_id;
};

/* prefixlen counts from ports_id: 48 + the port prefix's bits. Value: a policy ID. */
struct pol_port_key {
	__u32 prefixlen;
	__u32 ports_id;
	__u8 proto;
	__u8 pad;
	__be16 port;
};

/* The policy path's own connection tracking: every flow through a pod's interface gets a
 * forward entry and a reply twin, so replies of allowed connections pass both pods' policies. */
struct pct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

enum pct_flags {
	PCT_F_REPLY = 1 << 0,
	PCT_F_CLOSING = 1 << 1,
	/* The flow passed the destination's ingress (or the source's egress) rules of policy
	 * revision pct_val.rev; POL_INGRESS and POL_EGRESS shift it. */
	PCT_F_OK = 1 << 2,
};

struct pct_val {
	__u64 expires;
	__u32 flags;
	__u32 rev;
};

/* A dropped packet, for `capstan dp monitor`. */
enum pol_drop_reason {
	POL_DROP_PEER = 1, /* no rule admits the peer */
	POL_DROP_PORT = 2, /* the peer is admitted, but not on this protocol and port */
	POL_DROP_HOLE = 3, /* the peer is in an ipBlock's except */
};

struct pol_event {
	__u64 ts;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 reason;
	__u8 pad;
	__u32 ifindex;
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, struct pol_ep);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_eps SEC(".maps");

/* Addresses of this node its pods may always be reached from: the node's own, and the pod
 * gateway on every host veth, which the node's connections to its pods (kubelet probes) take
 * as their source. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pol_key);
	__type(value, struct pol_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pol_port_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 524288);
	__type(key, struct pct_key);
	__type(value, struct pct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_ct4 SEC(".maps");

/* The policy revision: the daemon bumps element 0 after every sync that changed the rules, so
 * a verdict cached in a flow's entry counts only while it is current. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_rev SEC(".maps");

/* Verdict counters: [dir * 4 + POL_STAT_*]. */
enum pol_stat {
	POL_STAT_ALLOW_FLOW = 0, /* new flows admitted at an isolated pod */
	POL_STAT_DENY = 1,       /* packets dropped */
	POL_STAT_REPLY = 2,      /* packets an isolated pod's rules deny, passed as replies */
	POL_STAT_OPEN_FLOW = 3,  /* new flows at a pod not isolated in that direction */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_stats SEC(".maps");

/* New flows admitted per policy and direction: [policy_id * 2 + dir]. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_counts SEC(".maps");

/* Drop events, rate-limited per CPU by policy_event_rl. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_events SEC(".maps");

struct pol_rl {
	__u64 window;
	__u64 sent;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pol_rl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_event_rl SEC(".maps");
