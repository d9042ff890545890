/* NetworkPolicy verdicts at a pod's interface. A packet is judged after any service
 * translation, on the pod addresses it really carries: the sending pod's egress rules where
 * it leaves its pod, the receiving pod's ingress rules where it enters one. Forward packets are
 * judged every time, so a policy change cuts a connection it no longer admits; packets of the
 * reverse direction of a tracked flow (replies) pass. A forward packet's verdict is cached in
 * its flow's entry for as long as the rules do not change, so an established flow costs the
 * same whatever the number of rules. */
#pragma once

#include "maps.h"

#define ICMP_ECHOREPLY 0
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct pol_pkt {
	struct pct_key k;
	__u8 tcp_flags;
	__u8 icmp_type;
};

enum pol_parse_rc {
	POL_PARSE_OK = 0,
	POL_PARSE_PASS = 1, /* not IPv4, a later fragment, or an ICMP error: not policy's business */
};

static __always_inline int pol_parse(struct __sk_buff *skb, struct pol_pkt *p)
{
	struct iphdr ip;
	__be16 ports[2];
	__u32 off;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return POL_PARSE_PASS;
	if (bpf_skb_load_bytes(skb, L3_OFF, &ip, sizeof(ip)) < 0)
		return POL_PARSE_PASS;
	if (ip.version != 4 || ip.ihl < 5)
		return POL_PARSE_PASS;
	/* The first fragment carried the ports and got the verdict; the rest cannot be judged
	 * alone, and reassembly fails anyway without the first. */
	if (ip.frag_off & bpf_htons(IP_OFFSET))
		return POL_PARSE_PASS;
	p->k.saddr = ip.saddr;
	p->k.daddr = ip.daddr;
	p->k.proto = ip.protocol;
	off = L3_OFF + ip.ihl * 4;
	switch (ip.protocol) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, off + 13, &p->tcp_flags, 1) < 0)
			return POL_PARSE_PASS;
		/* fallthrough */
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return POL_PARSE_PASS;
		p->k.sport = ports[0];
		p->k.dport = ports[1];
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, off, &p->icmp_type, 1) < 0)
			return POL_PARSE_PASS;
		/* Errors and echo replies answer something a pod sent; path MTU discovery needs
		 * them through. */
		switch (p->icmp_type) {
		case ICMP_ECHOREPLY:
		case ICMP_DEST_UNREACH:
		case ICMP_TIME_EXCEEDED:
		case ICMP_PARAMETERPROB:
			return POL_PARSE_PASS;
		}
		break;
	}
	return POL_PARSE_OK;
}

static __always_inline void pol_stat(__u32 dir, __u32 what)
{
	__u32 idx = dir * 4 + what;
	__u64 *n = bpf_map_lookup_elem(&policy_stats, &idx);

	if (n)
		*n += 1;
}

static __always_inline void pol_count(__u32 policy_id, __u32 dir)
{
	__u32 idx = policy_id * 2 + dir;
	__u64 *n = bpf_map_lookup_elem(&policy_counts, &idx);

	if (n)
		*n += 1;
}

/* pol_verdict looks the packet up in the rules of the pod ep for direction dir. It returns 0
 * to admit (with *policy_id set when a policy, not the pod's openness, admitted it) or a
 * pol_drop_reason. */
static __always_inline int pol_verdict(__be32 ep, __u32 dir, const struct pol_pkt *p,
				       __u32 *policy_id, bool *isolated)
{
	struct pol_ep *pe = bpf_map_lookup_elem(&policy_eps, &ep);
	struct pol_port_key pk = {};
	struct pol_key k = {};
	struct pol_val *v;
	__u32 *pid;

	*isolated = pe && (pe->flags & (1U << dir));
	if (!*isolated)
		return 0;
	k.prefixlen = 64 + 32;
	k.ep = ep;
	k.dir = dir;
	k.peer = dir == POL_INGRESS ? p->k.saddr : p->k.daddr;
	/* The node may always reach its own pods: kubelet probes come from it. */
	if (dir == POL_INGRESS && bpf_map_lookup_elem(&policy_hosts, &k.peer))
		return 0;
	v = bpf_map_lookup_elem(&policy_rules, &k);
	if (!v)
		return POL_DROP_PEER;
	if (v->ports_id == POL_PORTS_DENY)
		return POL_DROP_HOLE;
	if (v->ports_id == 0) {
		*policy_id = v->policy_id;
		return 0;
	}
	pk.prefixlen = 48 + 16;
	pk.ports_id = v->ports_id;
	pk.proto = p->k.proto;
	pk.port = p->k.dport;
	pid = bpf_map_lookup_elem(&policy_ports, &pk);
	if (!pid)
		return POL_DROP_PORT;
	*policy_id = *pid;
	return 0;
}

static __always_inline __u64 pct_timeout(__u8 proto, __u32 flags)
{
	if (flags & PCT_F_CLOSING)
		return ct_timeout_close_ns;
	return proto == IPPROTO_TCP || proto == IPPROTO_SCTP ? ct_timeout_tcp_ns : ct_timeout_udp_ns;
}

/* pct_touch refreshes an entry, at most once a second so busy flows do not write the map on
 * every packet, and shortens its life once the connection closes. */
static __always_inline void pct_touch(struct pct_val *e, const struct pol_pkt *p, __u64 now)
{
	if (p->k.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) &&
	    !(e->flags & PCT_F_CLOSING)) {
		e->flags |= PCT_F_CLOSING;
		e->expires = now + ct_timeout_close_ns;
		return;
	}
	if (e->flags & PCT_F_CLOSING)
		return;
	if (e->expires < now + pct_timeout(p->k.proto, e->flags) - NSEC_PER_SEC)
		e->expires = now + pct_timeout(p->k.proto, e->flags);
}

static __always_inline void pct_create(const struct pol_pkt *p, __u64 now, __u32 dir, __u32 rev)
{
	struct pct_val v = {
		.expires = now + pct_timeout(p->k.proto, 0),
		.flags = PCT_F_OK << dir,
		.rev = rev,
	};
	struct pct_key r = {
		.saddr = p->k.daddr,
		.daddr = p->k.saddr,
		.sport = p->k.dport,
		.dport = p->k.sport,
		.proto = p->k.proto,
	};

	bpf_map_update_elem(&policy_ct4, &p->k, &v, BPF_ANY);
	v.flags = PCT_F_REPLY;
	v.rev = 0;
	bpf_map_update_elem(&policy_ct4, &r, &v, BPF_ANY);
}

/* svc_reply reports whether the packet is a reply of a service flow already translated back
 * to the service address (rev_nat ran before this hook): the flow's forward entry, keyed by
 * the client's tuple, is this packet's reverse. Its forward packets were judged on the
 * backend's address. */
static __always_inline bool svc_reply(const struct pol_pkt *p)
{
	struct ct_key k = {
		.saddr = p->k.daddr,
		.daddr = p->k.saddr,
		.sport = p->k.dport,
		.dport = p->k.sport,
		.proto = p->k.proto,
		.dir = CT_DIR_FWD,
	};
	struct ct_entry *e = bpf_map_lookup_elem(&ct4, &k);

	return e && !(e->flags & CT_F_MASQ);
}

static __always_inline bool in_service_cidr(__be32 a)
{
	return service_cidr_mask && (a & service_cidr_mask) == service_cidr_addr;
}

static __always_inline bool in_cluster_cidr(__be32 a)
{
	return cluster_cidr_mask && (a & cluster_cidr_mask) == cluster_cidr_addr;
}

static __always_inline void pol_event(struct __sk_buff *skb, const struct pol_pkt *p, __u32 dir,
				      int reason, __u64 now)
{
	struct pol_event *ev;
	struct pol_rl *rl;
	__u32 zero = 0;

	if (!policy_events_per_sec)
		return;
	rl = bpf_map_lookup_elem(&policy_event_rl, &zero);
	if (!rl)
		return;
	if (now - rl->window >= NSEC_PER_SEC) {
		rl->window = now;
		rl->sent = 0;
	}
	if (rl->sent >= policy_events_per_sec)
		return;
	ev = bpf_ringbuf_reserve(&policy_events, sizeof(*ev), 0);
	if (!ev)
		return;
	rl->sent++;
	ev->ts = now;
	ev->saddr = p->k.saddr;
	ev->daddr = p->k.daddr;
	ev->sport = p->k.sport;
	ev->dport = p->k.dport;
	ev->proto = p->k.proto;
	ev->dir = dir;
	ev->reason = reason;
	ev->pad = 0;
	ev->ifindex = skb->ifindex;
	ev->pad2 = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* policy_judge applies NetworkPolicy to the packet in skb as it stands, for the pod it leaves
 * (POL_EGRESS, the source) or enters (POL_INGRESS, the destination). It returns TC_ACT_OK or
 * TC_ACT_SHOT. A subprogram rather than inlined: it runs at several hooks of each program. */
static __noinline int policy_judge(struct __sk_buff *skb, __u32 dir)
{
	struct pol_pkt p = {};
	__u32 policy_id = 0;
	struct pct_val *e;
	__u32 zero = 0, rev = 0, *revp;
	bool isolated;
	__u64 now;
	__be32 ep;
	int reason;

	if (dir > POL_EGRESS)
		return TC_ACT_OK;
	if (pol_parse(skb, &p) != POL_PARSE_OK)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&policy_ct4, &p.k);
	if (e && e->expires <= now)
		e = NULL;
	if (e && (e->flags & PCT_F_REPLY)) {
		pct_touch(e, &p, now);
		return TC_ACT_OK;
	}
	revp = bpf_map_lookup_elem(&policy_rev, &zero);
	if (revp)
		rev = *revp;
	if (e && e->rev == rev && (e->flags & (PCT_F_OK << dir))) {
		pct_touch(e, &p, now);
		return TC_ACT_OK;
	}
	ep = dir == POL_INGRESS ? p.k.daddr : p.k.saddr;
	reason = pol_verdict(ep, dir, &p, &policy_id, &isolated);
	if (reason) {
		/* A service address never opens a connection: a packet from one is a reply the
		 * stack's NAT translated back before this hook. */
		if (svc_reply(&p) || in_service_cidr(p.k.saddr)) {
			pol_stat(dir, POL_STAT_REPLY);
			return TC_ACT_OK;
		}
		pol_stat(dir, POL_STAT_DENY);
		pol_event(skb, &p, dir, reason, now);
		return TC_ACT_SHOT;
	}
	if (e) {
		/* Verdicts of an older revision are stale, the other direction's included. */
		if (e->rev != rev) {
			e->flags &= ~((PCT_F_OK << POL_INGRESS) | (PCT_F_OK << POL_EGRESS));
			e->rev = rev;
		}
		e->flags |= PCT_F_OK << dir;
		pct_touch(e, &p, now);
		return TC_ACT_OK;
	}
	pct_create(&p, now, dir, rev);
	if (isolated) {
		pol_stat(dir, POL_STAT_ALLOW_FLOW);
		pol_count(policy_id, dir);
	} else {
		pol_stat(dir, POL_STAT_OPEN_FLOW);
	}
	return TC_ACT_OK;
}
