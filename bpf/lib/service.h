/* The per-packet service path: conntrack hit or backend selection, DNAT (and SNAT at node
 * devices), rejection when a service has no endpoints. */
#pragma once

#include "nat.h"
#include "route.h"
#include "reject.h"

/* ct_usable tells whether an existing flow may keep its backend: the backend must still exist
 * at the same address (terminating is fine), and a fresh SYN after a close starts over. */
static __always_inline bool ct_usable(const struct ct_entry *e, const struct tuple *t)
{
	struct backend *be = bpf_map_lookup_elem(&backends, &e->backend_id);

	if (!be || be->addr != e->dst_addr || be->port != e->dst_port)
		return false;
	if ((e->flags & CT_F_CLOSING) &&
	    (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return false;
	return true;
}

/* svc_forward handles a packet travelling from a client. from_node marks a node device: there
 * NodePort traffic is SNATed to the node (unless the service is externalTrafficPolicy Local)
 * and translated packets are forwarded by FIB lookup. */
static __always_inline int svc_forward(struct __sk_buff *skb, struct tuple *t, bool from_node)
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
	struct backend *be = NULL;
	struct svc_val *s;
	bool nodeport;
	__u32 id;

	e = ct_lookup(&k);
	/* A pod's masqueraded flow to the outside shares the tuple but is none of ours. */
	if (e && (e->flags & CT_F_MASQ))
		e = NULL;
	if (e && !ct_usable(e, t)) {
		ct_delete(&k, e);
		e = NULL;
	}
	if (e) {
		ct_touch(e, t->proto, t->tcp_flags);
		goto xlate;
	}

	s = svc_lookup(t->daddr, t->dport, t->proto, !from_node, &nodeport);
	if (!s)
		return TC_ACT_OK;
	id = lb_select(s, bpf_ntohl(t->saddr), &be);
	if (!id || !be)
		return reject(skb, t);

	val.dst_addr = be->addr;
	val.dst_port = be->port;
	val.backend_id = id;
	val.svc_id = s->id;
	val.flags = CT_F_REWRITE_DST;
	/* A backend at one of this node's own addresses (a hostNetwork pod here) is reached
	 * through this node's stack, which answers the client itself: SNAT to our address would
	 * make the packet a martian, from a local address on the way in. */
	if (from_node && !(s->flags & SVC_F_LOCAL) && !bpf_map_lookup_elem(&node_addrs, &be->addr)) {
		/* Replies must come back through this node to be reverse-translated. */
		val.src_addr = nodeport ? t->daddr : snat_fallback_addr;
		if (val.src_addr) {
			val.flags |= CT_F_REWRITE_SRC;
			if (snat_alloc(&k, &val) < 0) {
				stat_inc(STAT_SVC_SNAT_FAIL);
				return TC_ACT_SHOT;
			}
		}
	}
	if (s->algo == LB_LEAST_CONN)
		val.flags |= CT_F_COUNTED;
	e = ct_create(&k, &val);
	if (!e) {
		stat_inc(STAT_SVC_CT_FAIL);
		return TC_ACT_SHOT;
	}
	stat_inc(STAT_SVC_NEW);
	if (val.flags & CT_F_COUNTED)
		conn_inc(id);
	/* A lone RST or FIN opening a flow still closes it. */
	ct_touch(e, t->proto, t->tcp_flags);

xlate:
	if (nat_apply(skb, t, e) < 0) {
		stat_inc(STAT_SVC_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	if (from_node) {
		/* A backend on this node gets the packet straight into its netns; one on another
		 * node, in VXLAN mode, through the tunnel (the stack has no route to it). */
		int rc = pod_route(skb, t->daddr);

		if (rc >= 0)
			return rc;
		rc = fib_redirect(skb, t);
		if (rc == TC_ACT_SHOT)
			stat_inc(STAT_SVC_FWD_FAIL);
		else if (rc == TC_ACT_OK)
			stat_inc(STAT_SVC_TO_STACK);
		return rc;
	}
	return TC_ACT_OK;
}
