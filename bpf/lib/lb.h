/* Service lookup and backend selection, shared by the socket and the per-packet paths. */
#pragma once

#include "maps.h"
#include "maglev.h"

/* svc_lookup finds the service for a destination: an exact frontend first, then a NodePort
 * when the destination is one of this node's addresses. internal marks traffic from this node
 * or its pods, which takes a Local frontend's internal entry when there is one. */
static __always_inline struct svc_val *svc_lookup(__be32 daddr, __be16 dport, __u8 proto,
						  bool internal, bool *nodeport)
{
	struct svc_key k = { .addr = daddr, .port = dport, .proto = proto };
	struct svc_val *s, *all;

	*nodeport = false;
	s = bpf_map_lookup_elem(&services, &k);
	if (!s) {
		if (!bpf_map_lookup_elem(&node_addrs, &daddr))
			return NULL;
		k.addr = 0;
		s = bpf_map_lookup_elem(&services, &k);
		if (!s)
			return NULL;
		*nodeport = true;
	}
	if (!internal || !(s->flags & SVC_F_LOCAL))
		return s;
	all = s;
	k.scope = SVC_SCOPE_INTERNAL;
	s = bpf_map_lookup_elem(&services, &k);
	return s ? s : all;
}

static __always_inline __u32 slot_backend(__u32 svc_id, __u32 slot)
{
	struct slot_key k = { .svc_id = svc_id, .slot = slot };
	__u32 *id = bpf_map_lookup_elem(&svc_slots, &k);

	return id ? *id : 0;
}

static __always_inline void conn_inc(__u32 backend_id)
{
	__u32 *n = bpf_map_lookup_elem(&backend_conns, &backend_id);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline void conn_dec(__u32 backend_id)
{
	__u32 *n = bpf_map_lookup_elem(&backend_conns, &backend_id);

	/* Never wrap below zero: Go zeroes a count when it reuses an ID, and an old flow
	 * closing afterwards must not underflow the new backend's count. */
	if (n && *n > 0)
		__sync_fetch_and_sub(n, 1);
}

struct lc_scan {
	__u32 svc_id;
	__u32 count;
	__u32 start;
	__u32 best_id;
	__u32 best_conns;
};

static long lc_step(__u32 i, struct lc_scan *c)
{
	__u32 slot = c->start + i, id, *n, conns;

	if (slot >= c->count)
		slot -= c->count;
	id = slot_backend(c->svc_id, slot);
	if (!id)
		return 0;
	n = bpf_map_lookup_elem(&backend_conns, &id);
	conns = n ? *n : 0;
	if (!c->best_id || conns < c->best_conns) {
		c->best_id = id;
		c->best_conns = conns;
	}
	/* Nothing beats an idle backend. */
	return conns == 0 ? 1 : 0;
}

/* least_conn scans every selectable slot, starting at a random one so ties spread out. */
static __always_inline __u32 least_conn(struct svc_val *s)
{
	struct lc_scan c = {
		.svc_id = s->id,
		.count = s->count,
		.start = bpf_get_prandom_u32() % s->count,
	};

	bpf_loop(s->count, lc_step, &c, 0);
	return c.best_id;
}

static __always_inline __u32 round_robin(struct svc_val *s)
{
	__u32 *next = bpf_map_lookup_elem(&rr_state, &s->id);

	if (!next)
		return 0;
	return slot_backend(s->id, __sync_fetch_and_add(next, 1) % s->count);
}

static __always_inline __u32 algo_pick(struct svc_val *s, __u64 client)
{
	__u32 id = 0;

	switch (s->algo) {
	case LB_ROUND_ROBIN:
		id = round_robin(s);
		break;
	case LB_LEAST_CONN:
		id = least_conn(s);
		break;
	case LB_MAGLEV:
		id = maglev_pick(s->id, client_hash(client));
		break;
	}
	/* Random is the default, and the fallback while Go is still filling a table. */
	if (!id)
		id = slot_backend(s->id, bpf_get_prandom_u32() % s->count);
	return id;
}

/* lb_select picks a backend for a new connection from client (an IPv4 address in host order,
 * or a netns cookie) and returns its ID and entry, or 0 when the service has none. */
static __always_inline __u32 lb_select(struct svc_val *s, __u64 client, struct backend **out)
{
	struct affinity_key ak = { .svc_id = s->id, .client = client };
	struct affinity_val *av, nav = {};
	struct backend *be;
	__u64 now = 0;
	__u32 id = 0;

	if (s->count == 0)
		return 0;

	if (s->flags & SVC_F_AFFINITY) {
		now = bpf_ktime_get_ns();
		av = bpf_map_lookup_elem(&affinity4, &ak);
		if (av && now - av->last_used < (__u64)s->affinity_timeout * NSEC_PER_SEC) {
			be = bpf_map_lookup_elem(&backends, &av->backend_id);
			if (be && !(be->flags & BE_F_TERMINATING))
				id = av->backend_id;
		}
	}

	if (!id)
		id = algo_pick(s, client);
	be = bpf_map_lookup_elem(&backends, &id);
	if (!be)
		return 0;

	if (s->flags & SVC_F_AFFINITY) {
		nav.backend_id = id;
		nav.last_used = now;
		bpf_map_update_elem(&affinity4, &ak, &nav, BPF_ANY);
	}
	*out = be;
	return id;
}
