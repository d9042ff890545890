/* Masquerade: pod traffic leaving the cluster is SNATed to the node's address on the node
 * device's egress, tracked in ct4 like NodePort SNAT (sharing its port range), and reverse
 * translated by rev_nat when replies come in. */
#pragma once

#include "nat.h"
#include "route.h"

static __always_inline bool in_range(__be32 a, __be32 net, __be32 mask)
{
	return mask && (a & mask) == net;
}

static __always_inline bool masq_wanted(const struct tuple *t)
{
	if (!masquerade || !in_range(t->saddr, cluster_cidr_addr, cluster_cidr_mask))
		return false;
	if (in_range(t->daddr, cluster_cidr_addr, cluster_cidr_mask) ||
	    in_range(t->daddr, service_cidr_addr, service_cidr_mask))
		return false;
	/* The cluster's nodes, this one included, see pods by their own addresses. */
	return !bpf_map_lookup_elem(&node_addrs, &t->daddr) &&
	       !bpf_map_lookup_elem(&peer_nodes, &t->daddr);
}

/* masq_addr picks the source the stack would give the packet on this device (like iptables'
 * MASQUERADE), or snat_fallback_addr when the kernel cannot say. */
static __always_inline __be32 masq_addr(struct __sk_buff *skb, const struct tuple *t)
{
	struct bpf_fib_lookup p = {
		.family = AF_INET,
		.l4_protocol = t->proto,
		.sport = t->sport,
		.dport = t->dport,
		.ipv4_dst = t->daddr,
		.ifindex = skb->ifindex,
	};
	long rc = bpf_fib_lookup(skb, &p, sizeof(p),
				 BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH |
					 BPF_FIB_LOOKUP_SRC);

	if (rc == BPF_FIB_LKUP_RET_SUCCESS && p.ipv4_src)
		return p.ipv4_src;
	return snat_fallback_addr;
}

/* masq_egress SNATs a pod's packet to the outside. A flow starts with a TCP SYN or any UDP
 * datagram; a TCP segment of no known flow (a connection the outside opened to the pod, or
 * one older than masquerading) passes untouched. */
static __always_inline int masq_egress(struct __sk_buff *skb, struct tuple *t)
{
	struct ct_key k = {
		.saddr = t->saddr,
		.daddr = t->daddr,
		.sport = t->sport,
		.dport = t->dport,
		.proto = t->proto,
		.dir = CT_DIR_FWD,
	};
	struct ct_entry val = {}, *e;
	bool syn = (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;

	if (!masq_wanted(t))
		return TC_ACT_OK;
	e = ct_lookup(&k);
	if (e && !(e->flags & CT_F_MASQ))
		return TC_ACT_OK;
	/* A new connection on the tuple of a closed one gets a fresh port. */
	if (e && (e->flags & CT_F_CLOSING) && syn) {
		ct_delete(&k, e);
		e = NULL;
	}
	if (e) {
		ct_touch(e, t->proto, t->tcp_flags);
		goto xlate;
	}
	if (t->proto == IPPROTO_TCP && !syn)
		return TC_ACT_OK;

	val.src_addr = masq_addr(skb, t);
	val.dst_addr = t->daddr;
	val.dst_port = t->dport;
	val.flags = CT_F_REWRITE_SRC | CT_F_MASQ;
	if (!val.src_addr || snat_alloc(&k, &val) < 0) {
		stat_inc(STAT_MASQ_FAIL);
		return val.src_addr ? TC_ACT_SHOT : TC_ACT_OK;
	}
	e = ct_create(&k, &val);
	if (!e) {
		stat_inc(STAT_MASQ_FAIL);
		return TC_ACT_SHOT;
	}
	stat_inc(STAT_MASQ_NEW);
	ct_touch(e, t->proto, t->tcp_flags);

xlate:
	if (nat_apply(skb, t, e) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
