/* Maglev lookup. The tables are computed in Go (dataplane/ebpf/maglev.go); BPF only hashes the
 * client and indexes. The hash must stay identical to clientHash in maglev.go. */
#pragma once

#include "maps.h"

/* Murmur3's 32-bit finaliser: cheap, and every input bit moves every output bit. */
static __always_inline __u32 hash32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* client_hash hashes a client identity: an IPv4 address in host order, or a netns cookie on
 * the socket path. */
static __always_inline __u32 client_hash(__u64 client)
{
	return hash32((__u32)client ^ (__u32)(client >> 32) ^ lb_hash_seed);
}

/* maglev_pick returns the backend ID the service's table holds for hash, or 0. */
static __always_inline __u32 maglev_pick(__u32 svc_id, __u32 hash)
{
	__u32 zero = 0, idx, *m, *id;
	void *tbl;

	tbl = bpf_map_lookup_elem(&maglev_tables, &svc_id);
	if (!tbl)
		return 0;
	m = bpf_map_lookup_elem(tbl, &zero);
	if (!m || *m == 0)
		return 0;
	idx = hash % *m + 1;
	id = bpf_map_lookup_elem(tbl, &idx);
	return id ? *id : 0;
}
