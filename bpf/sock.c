//go:build ignore

/* Socket-level load balancing on a cgroup: the service address is swapped for a backend once
 * per connect() (TCP and connected UDP) or once per datagram (unconnected UDP), so the packets
 * themselves never need NAT. recvmsg4 and getpeername4 show the application the service
 * address it asked for. */

#include "lib/lb.h"

/* sock_client identifies the client for affinity and source-hash. A bound socket knows its
 * address; an unbound one is not yet addressed, so its network namespace stands in: a local
 * pod's is mapped to the pod's address (what the packet path sees of a SYN that missed this
 * hook), any other (the node's own) keys by its cookie. */
static __always_inline __u64 sock_client(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__be32 *addr;
	__u64 cookie;

	if (sk && sk->src_ip4)
		return bpf_ntohl(sk->src_ip4);
	cookie = bpf_get_netns_cookie(ctx);
	addr = bpf_map_lookup_elem(&netns_addrs, &cookie);
	return addr ? bpf_ntohl(*addr) : cookie;
}

static __always_inline void revnat_store(struct bpf_sock_addr *ctx, struct backend *be,
					 __be32 vip, __be16 vport)
{
	struct sock_revnat_key k = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = be->addr,
		.port = be->port,
	};
	struct sock_revnat_val v = { .addr = vip, .port = vport };

	bpf_map_update_elem(&sock_revnat4, &k, &v, BPF_ANY);
}

/* sock_count moves the socket's least-conn reference to backend id. */
static __always_inline void sock_count(struct bpf_sock_addr *ctx, __u32 id)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 *old = bpf_map_lookup_elem(&sock_backend, &cookie);

	/* A UDP socket may connect again; it gives back what it held. */
	if (old) {
		conn_dec(*old);
		*old = id;
		conn_inc(id);
		return;
	}
	/* A full map means the connection goes uncounted rather than never uncounted. */
	if (bpf_map_update_elem(&sock_backend, &cookie, &id, BPF_NOEXIST) == 0)
		conn_inc(id);
}

/* sock_xlate rewrites the destination of ctx when it is a service. It returns 1 to let the
 * call go on, 0 to fail it with ECONNREFUSED. */
static __always_inline int sock_xlate(struct bpf_sock_addr *ctx, bool connected)
{
	__be32 vip = ctx->user_ip4;
	__be16 vport = (__be16)ctx->user_port;
	struct backend *be = NULL;
	struct svc_val *s;
	bool nodeport;
	__u8 proto;
	__u32 id;

	if (ctx->protocol == IPPROTO_TCP)
		proto = IPPROTO_TCP;
	else if (ctx->protocol == IPPROTO_UDP)
		proto = IPPROTO_UDP;
	else
		return 1;

	s = svc_lookup(vip, vport, proto, true, &nodeport);
	if (!s)
		return 1;
	id = lb_select(s, sock_client(ctx), &be);
	if (!id || !be) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	ctx->user_ip4 = be->addr;
	ctx->user_port = be->port;
	revnat_store(ctx, be, vip, vport);
	/* Least-conn counts connections; a lone datagram is none. */
	if (connected && s->algo == LB_LEAST_CONN)
		sock_count(ctx, id);
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, true);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, false);
}

/* sock_revnat shows the service address where the socket sees its backend. */
static __always_inline int sock_revnat(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_key k = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct sock_revnat_val *v = bpf_map_lookup_elem(&sock_revnat4, &k);

	if (v) {
		ctx->user_ip4 = v->addr;
		ctx->user_port = v->port;
	}
	return 1;
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_revnat(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_revnat(ctx);
}

/* A closed socket gives back its least-conn reference. */
SEC("cgroup/sock_release")
int sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);
	__u32 *id = bpf_map_lookup_elem(&sock_backend, &cookie);

	if (id) {
		conn_dec(*id);
		bpf_map_delete_elem(&sock_backend, &cookie);
	}
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
