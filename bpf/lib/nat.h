/* Address rewriting with incremental checksums, SNAT port choice, reverse NAT of replies and
 * FIB-based forwarding of translated packets. */
#pragma once

#include "conntrack.h"

#define IP_CSUM_OFF (L3_OFF + __builtin_offsetof(struct iphdr, check))
#define IP_SRC_OFF (L3_OFF + __builtin_offsetof(struct iphdr, saddr))
#define IP_DST_OFF (L3_OFF + __builtin_offsetof(struct iphdr, daddr))

/* nat_rewrite replaces the source (src) or destination address and port of the packet and
 * keeps t in step with it. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct tuple *t, bool src,
				       __be32 addr, __be16 port)
{
	__be32 old_addr = src ? t->saddr : t->daddr;
	__be16 old_port = src ? t->sport : t->dport;
	__u32 csum_off = t->l4_off + (t->proto == IPPROTO_TCP ? 16 : 6);
	/* A zero UDP checksum means "none" and must stay zero. */
	__u64 mangled = t->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (addr != old_addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, addr,
					BPF_F_PSEUDO_HDR | mangled | sizeof(addr)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, addr, sizeof(addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, src ? IP_SRC_OFF : IP_DST_OFF, &addr, sizeof(addr),
					0) < 0)
			return -1;
	}
	if (port != old_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled | sizeof(port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, t->l4_off + (src ? 0 : 2), &port, sizeof(port), 0) < 0)
			return -1;
	}
	if (src) {
		t->saddr = addr;
		t->sport = port;
	} else {
		t->daddr = addr;
		t->dport = port;
	}
	return 0;
}

/* nat_apply performs the rewrite a conntrack entry describes. */
static __always_inline int nat_apply(struct __sk_buff *skb, struct tuple *t,
				     const struct ct_entry *e)
{
	__be32 saddr = e->src_addr, daddr = e->dst_addr;
	__be16 sport = e->src_port, dport = e->dst_port;
	__u32 flags = e->flags;

	if ((flags & CT_F_REWRITE_DST) && nat_rewrite(skb, t, false, daddr, dport) < 0)
		return -1;
	if ((flags & CT_F_REWRITE_SRC) && nat_rewrite(skb, t, true, saddr, sport) < 0)
		return -1;
	return 0;
}

/* snat_port_free reports whether the reply tuple r is free for a new flow. A tuple still held
 * by a TCP flow that closed over a second ago is reclaimed, as a new SYN reopens a TIME_WAIT
 * conntrack entry in netfilter: at high connection rates closed flows would otherwise hold
 * the small SNAT range for the whole close timeout (4,536 ports over 10 s is ~450 new
 * connections a second per backend). */
static __always_inline bool snat_port_free(struct ct_key *r)
{
	struct ct_entry *re = bpf_map_lookup_elem(&ct4, r), *fe;
	struct ct_key f = {};

	if (!re)
		return true;
	ct_fwd_key(r, re, &f);
	fe = ct_lookup(&f);
	if (!fe) {
		bpf_map_delete_elem(&ct4, r);
		return true;
	}
	if ((fe->flags & CT_F_CLOSING) &&
	    fe->expires + NSEC_PER_SEC < bpf_ktime_get_ns() + ct_timeout_close_ns) {
		ct_delete(&f, fe);
		return true;
	}
	return false;
}

/* SNAT port search state for bpf_loop: the candidate reply tuple and, when one is free, its
 * port (network order). */
struct snat_search {
	struct ct_key r;
	__u32 range;
	__u16 first; /* the client's own port, tried first when it is in range */
	__be16 port;
};

static long snat_try(__u32 i, struct snat_search *c)
{
	__u16 port = c->first;

	if (i > 0 || port < snat_port_min || port > snat_port_max)
		port = snat_port_min + bpf_get_prandom_u32() % c->range;
	c->r.dport = bpf_htons(port);
	if (!snat_port_free(&c->r))
		return 0;
	c->port = c->r.dport;
	return 1;
}

/* snat_alloc picks the SNAT source port for a new flow whose entry already holds src_addr:
 * the client's own port when it is in range and free, otherwise a random free one. Ports
 * freed less than a second ago stay taken, so at a few thousand new flows a second to one
 * backend most of the range can be busy: up to 128 tries keep a failure (a dropped SYN, a
 * 1 s retransmit for the client) out of reach even with 90% of it taken. */
static __always_inline int snat_alloc(struct ct_key *fwd, struct ct_entry *val)
{
	struct snat_search c = {
		.range = (__u32)snat_port_max - snat_port_min + 1,
		.first = bpf_ntohs(fwd->sport),
	};

	val->src_port = 0;
	ct_reply_key(fwd, val, &c.r);
	if (bpf_loop(128, snat_try, &c, 0) < 0 || !c.port)
		return -1;
	val->src_port = c.port;
	return 0;
}

/* ttl_dec does the router's TTL decrement for packets fib_redirect forwards past the stack. */
static __always_inline int ttl_dec(struct __sk_buff *skb)
{
	__u8 hdr[2]; /* ttl and protocol: one 16-bit word of the header checksum */
	__u16 old, new;

	if (bpf_skb_load_bytes(skb, L3_OFF + __builtin_offsetof(struct iphdr, ttl), hdr, 2) < 0)
		return -1;
	if (hdr[0] <= 1)
		return -1;
	old = bpf_htons(((__u16)hdr[0] << 8) | hdr[1]);
	hdr[0]--;
	new = bpf_htons(((__u16)hdr[0] << 8) | hdr[1]);
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, sizeof(new)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, L3_OFF + __builtin_offsetof(struct iphdr, ttl), hdr, 1, 0);
}

/* fib_redirect sends a translated packet straight to its next hop. Packets translated at
 * ingress cannot go back through the stack: a source that is now the node's own address (SNAT)
 * or a service address would fail the stack's source validation. tot_len stays 0: given one,
 * the kernel compares the IP length with the MTU and refuses GRO/GSO packets (FRAG_NEEDED),
 * which stalled every TCP stream past its first window; without it the kernel checks the skb
 * itself, segments included. */
static __always_inline int fib_redirect(struct __sk_buff *skb, struct tuple *t)
{
	struct bpf_fib_lookup p = {
		.family = AF_INET,
		.l4_protocol = t->proto,
		.sport = t->sport,
		.dport = t->dport,
		.ipv4_src = t->saddr,
		.ipv4_dst = t->daddr,
		.ifindex = skb->ifindex,
	};
	struct bpf_redir_neigh nh = { .nh_family = AF_INET };
	long rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);

	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		/* Local delivery and the like: the stack knows best. */
		return TC_ACT_OK;
	/* An expiring packet is dropped here; the stack would have sent time-exceeded. */
	if (ttl_dec(skb) < 0)
		return TC_ACT_SHOT;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, p.dmac, ETH_ALEN, 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, p.smac, ETH_ALEN, 0) < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(p.ifindex, 0);
	}
	/* The neighbour is not resolved yet: let the kernel resolve it. */
	nh.ipv4_nh = p.ipv4_dst;
	return bpf_redirect_neigh(p.ifindex, &nh, sizeof(nh), 0);
}

/* rev_nat translates a reply of a tracked flow back to the addresses its client used. It
 * returns -1 for packets that are not such a reply, else a tc verdict. At ingress hooks the
 * packet is redirected by FIB lookup; at egress it is already on its way. */
static __always_inline int rev_nat(struct __sk_buff *skb, struct tuple *t, bool ingress)
{
	struct ct_key rk = {
		.saddr = t->saddr,
		.daddr = t->daddr,
		.sport = t->sport,
		.dport = t->dport,
		.proto = t->proto,
		.dir = CT_DIR_REPLY,
	};
	struct ct_key fk = {};
	struct ct_entry *r, *f;

	r = bpf_map_lookup_elem(&ct4, &rk);
	if (!r)
		return -1;
	ct_fwd_key(&rk, r, &fk);
	f = ct_lookup(&fk);
	if (!f) {
		/* Its flow is gone; the twin is stale. */
		bpf_map_delete_elem(&ct4, &rk);
		return -1;
	}
	ct_touch(f, t->proto, t->tcp_flags);
	if (nat_apply(skb, t, r) < 0)
		return TC_ACT_SHOT;
	return ingress ? fib_redirect(skb, t) : TC_ACT_OK;
}
