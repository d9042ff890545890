/* Connection tracking for the per-packet path: LRU hash entries, expiry by a bpf_timer on each
 * forward entry, and least-conn accounting tied to the entry's life. */
#pragma once

#include "maps.h"
#include "lb.h"

static __always_inline __u64 ct_timeout(__u8 proto, __u32 flags)
{
	if (flags & CT_F_CLOSING)
		return ct_timeout_close_ns;
	return proto == IPPROTO_TCP ? ct_timeout_tcp_ns : ct_timeout_udp_ns;
}

/* ct_reply_key derives the DIR_REPLY key from a forward key and its entry. */
static __always_inline void ct_reply_key(const struct ct_key *fwd, const struct ct_entry *e,
					 struct ct_key *r)
{
	r->saddr = e->dst_addr;
	r->sport = e->dst_port;
	r->daddr = (e->flags & CT_F_REWRITE_SRC) ? e->src_addr : fwd->saddr;
	r->dport = (e->flags & CT_F_REWRITE_SRC) ? e->src_port : fwd->sport;
	r->proto = fwd->proto;
	r->dir = CT_DIR_REPLY;
	r->pad = 0;
}

/* ct_fwd_key derives the forward key from a DIR_REPLY key and its entry (the inverse of
 * ct_reply_key), so reply packets can refresh and close the flow. */
static __always_inline void ct_fwd_key(const struct ct_key *rep, const struct ct_entry *e,
				       struct ct_key *f)
{
	f->saddr = (e->flags & CT_F_REWRITE_DST) ? e->dst_addr : rep->daddr;
	f->sport = (e->flags & CT_F_REWRITE_DST) ? e->dst_port : rep->dport;
	f->daddr = e->src_addr;
	f->dport = e->src_port;
	f->proto = rep->proto;
	f->dir = CT_DIR_FWD;
	f->pad = 0;
}

/* ct_uncount drops the flow's least-conn reference exactly once, whoever gets there first
 * (FIN/RST on either side, expiry, or the timer). */
static __always_inline void ct_uncount(struct ct_entry *e)
{
	if (__sync_fetch_and_and(&e->flags, ~CT_F_COUNTED) & CT_F_COUNTED)
		conn_dec(e->backend_id);
}

static __always_inline void ct_delete(struct ct_key *fwd, struct ct_entry *e)
{
	struct ct_key r = {};

	ct_uncount(e);
	ct_reply_key(fwd, e, &r);
	bpf_map_delete_elem(&ct4, &r);
	bpf_map_delete_elem(&ct4, fwd);
}

static int ct_expire(void *map, struct ct_key *key, struct ct_entry *e)
{
	__u64 now = bpf_ktime_get_ns();

	/* Traffic pushed expires forward since the timer was armed: sleep the rest. */
	if (e->expires > now) {
		if (bpf_timer_start(&e->timer, e->expires - now, 0) < 0)
			stat_inc(STAT_CT_TIMER_FAIL);
		return 0;
	}
	ct_delete(key, e);
	return 0;
}

/* ct_lookup returns a live forward entry or NULL; one past its expiry is removed on the spot
 * (the timer may lag a little). Reply entries have no clock of their own: they live exactly as
 * long as their forward entry. */
static __always_inline struct ct_entry *ct_lookup(struct ct_key *k)
{
	struct ct_entry *e = bpf_map_lookup_elem(&ct4, k);

	if (!e)
		return NULL;
	if (e->expires <= bpf_ktime_get_ns()) {
		ct_delete(k, e);
		return NULL;
	}
	return e;
}

/* ct_touch refreshes a forward entry and notes the end of a TCP connection. */
static __always_inline void ct_touch(struct ct_entry *e, __u8 proto, __u8 tcp_flags)
{
	__u64 now = bpf_ktime_get_ns();

	if (proto == IPPROTO_TCP && (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))) {
		ct_uncount(e);
		if (!(e->flags & CT_F_CLOSING)) {
			__sync_fetch_and_or(&e->flags, CT_F_CLOSING);
			e->expires = now + ct_timeout_close_ns;
			/* Pull the timer in: it was armed for the long established timeout. */
			if (bpf_timer_start(&e->timer, ct_timeout_close_ns, 0) < 0)
				stat_inc(STAT_CT_TIMER_FAIL);
		}
		return;
	}
	e->expires = now + ct_timeout(proto, e->flags);
}

/* ct_create stores a forward entry and its reply twin and arms the expiry timer. On success
 * it returns the stored forward entry. */
static __always_inline struct ct_entry *ct_create(struct ct_key *fwd, struct ct_entry *val)
{
	struct ct_key r = {};
	struct ct_entry *e;

	val->expires = bpf_ktime_get_ns() + ct_timeout(fwd->proto, val->flags);
	ct_reply_key(fwd, val, &r);
	if (bpf_map_update_elem(&ct4, fwd, val, BPF_ANY) < 0)
		return NULL;
	e = bpf_map_lookup_elem(&ct4, fwd);
	if (!e)
		return NULL;

	/* The reply twin carries the inverse rewrite; its own timer stays unarmed. */
	struct ct_entry rev = {
		.src_addr = fwd->daddr,
		.src_port = fwd->dport,
		.dst_addr = fwd->saddr,
		.dst_port = fwd->sport,
		.flags = CT_F_REWRITE_SRC | ((val->flags & CT_F_REWRITE_SRC) ? CT_F_REWRITE_DST : 0) |
			 (val->flags & CT_F_MASQ),
		.backend_id = val->backend_id,
		.svc_id = val->svc_id,
	};
	if (bpf_map_update_elem(&ct4, &r, &rev, BPF_ANY) < 0) {
		bpf_map_delete_elem(&ct4, fwd);
		return NULL;
	}

	if (bpf_timer_init(&e->timer, &ct4, CLOCK_MONOTONIC) < 0 ||
	    bpf_timer_set_callback(&e->timer, ct_expire) < 0 ||
	    bpf_timer_start(&e->timer, ct_timeout(fwd->proto, val->flags), 0) < 0)
		stat_inc(STAT_CT_TIMER_FAIL);
	return e;
}
