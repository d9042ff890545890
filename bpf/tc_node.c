//go:build ignore

/* tc programs on the node's devices: NodePort and external access to services, with SNAT to
 * the node address unless externalTrafficPolicy is Local, reverse translation of replies
 * that come back from remote backends, masquerade of pod traffic leaving the cluster, and
 * the receiving end of the VXLAN tunnel. */

#include "lib/service.h"
#include "lib/masq.h"

SEC("tc")
int tc_node_ingress(struct __sk_buff *skb)
{
	struct tuple t = {};
	int rc;

	if (policy_only)
		return TC_ACT_OK;
	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	rc = rev_nat(skb, &t, true);
	if (rc >= 0)
		return rc;
	return svc_forward(skb, &t, true);
}

/* Leaving the node: a reply the stack routed out before any other hook translated it, and
 * pod traffic to the outside, masqueraded. In policy-only mode, only the egress rules of
 * local pods' traffic. */
SEC("tc")
int tc_node_egress(struct __sk_buff *skb)
{
	struct tuple t = {};
	__be32 saddr;
	int rc;

	if (policy_only) {
		/* A local pod's service flow to another node, after the stack's DNAT. */
		if (bpf_skb_load_bytes(skb, L3_OFF + 12, &saddr, sizeof(saddr)) == 0 &&
		    skb->protocol == bpf_htons(ETH_P_IP) && in_cluster_cidr(saddr))
			return policy_judge(skb, POL_EGRESS);
		return TC_ACT_OK;
	}
	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	rc = rev_nat(skb, &t, false);
	if (rc >= 0)
		return rc;
	return masq_egress(skb, &t);
}

/* Ingress of the VXLAN device: decapsulated packets from pods of other nodes. Replies of
 * service flows opened here are reverse-translated (the pod veth's egress, which would do it,
 * is skipped), then pods of this node get the packet straight into their netns. The rest goes
 * to the stack; its inner destination MAC is the sending node's gateway, not this device's,
 * so the packet is marked as addressed to this host or the stack would drop it. */
SEC("tc")
int tc_tunnel_ingress(struct __sk_buff *skb)
{
	struct endpoint_info *ep;
	struct tuple t = {};
	__be32 daddr;
	int rc;

	if (parse_ipv4(skb, &t) == 0) {
		if (rev_nat(skb, &t, false) == TC_ACT_SHOT)
			return TC_ACT_SHOT;
		daddr = t.daddr;
	} else if (load_daddr(skb, &daddr) < 0) {
		return TC_ACT_OK;
	}
	ep = bpf_map_lookup_elem(&endpoints, &daddr);
	if (ep) {
		rc = ep_deliver(skb, ep, STAT_TUNNEL_DELIVER);
		if (rc >= 0)
			return rc;
	}
	bpf_skb_change_type(skb, PACKET_HOST);
	stat_inc(STAT_TUNNEL_HOST);
	return TC_ACT_OK;
}

/* Egress of the VXLAN device: packets the stack routed into it (the node's own processes, a
 * service backend a host socket was load-balanced to) carry no tunnel key yet; give them the
 * owning node's from tunnel_routes. Packets tc_pod encapsulated already have theirs. */
SEC("tc")
int tc_tunnel_egress(struct __sk_buff *skb)
{
	struct lpm4_key k = { .prefixlen = 32 };
	struct bpf_tunnel_key key = {};
	__be32 *node;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
		return TC_ACT_OK;
	if (load_daddr(skb, &k.addr) < 0)
		return TC_ACT_OK;
	node = bpf_map_lookup_elem(&tunnel_routes, &k);
	if (!node)
		return TC_ACT_SHOT; /* the device cannot send a packet without a key */
	__builtin_memset(&key, 0, sizeof(key));
	key.tunnel_id = tunnel_vni;
	key.remote_ipv4 = bpf_ntohl(*node);
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return TC_ACT_SHOT;
	stat_inc(STAT_TUNNEL_ENCAP);
	return TC_ACT_OK;
}

/* Conntrack garbage collection. Each flow's bpf_timer deletes it at expiry, but bpf_timer_init
 * allocates without sleeping and fails under load (on 6.18, for most new flows at a few
 * thousand a second), leaving flows that only a later packet of the same tuple or an LRU
 * eviction would remove, a least-conn flow still counted against its backend. The daemon
 * runs this program (BPF_PROG_RUN, never attached) every few seconds to remove them; its
 * return value is how many entries it deleted. */
struct ct_gc_state {
	__u64 now;
	__u32 deleted;
};

static long ct_gc_one(void *map, struct ct_key *k, struct ct_entry *e, struct ct_gc_state *c)
{
	struct ct_key f = {};

	if (k->dir == CT_DIR_FWD) {
		if (e->expires <= c->now) {
			ct_delete(k, e);
			c->deleted += 2;
		}
		return 0;
	}
	/* A reply twin lives as long as its forward entry. */
	ct_fwd_key(k, e, &f);
	if (!bpf_map_lookup_elem(&ct4, &f) && bpf_map_delete_elem(&ct4, k) == 0)
		c->deleted++;
	return 0;
}

SEC("tc")
int ct_gc(struct __sk_buff *skb)
{
	struct ct_gc_state c = { .now = bpf_ktime_get_ns() };

	bpf_for_each_map_elem(&ct4, ct_gc_one, &c, 0);
	return c.deleted;
}

char _license[] SEC("license") = "Dual BSD/GPL";
