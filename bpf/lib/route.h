/* Pod routing: delivery to pods on this node with bpf_redirect_peer, and to pods on other
 * nodes through a collect-metadata VXLAN device when routing_mode is ROUTING_VXLAN. */
#pragma once

#include "nat.h"
#include "policy.h"

/* load_daddr reads the destination of any IPv4 packet, for routing what parse_ipv4 leaves
 * alone (ICMP, later fragments). */
static __always_inline int load_daddr(struct __sk_buff *skb, __be32 *daddr)
{
	__u8 vihl;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, L3_OFF, &vihl, 1) < 0 || vihl >> 4 != 4)
		return -1;
	return bpf_skb_load_bytes(skb, IP_DST_OFF, daddr, sizeof(*daddr));
}

/* ep_deliver hands a packet to a pod on this node: the pod's ingress policy, one routed hop
 * (TTL, MACs of the pod's link) and bpf_redirect_peer into the pod's netns, which skips the
 * host veth's egress program. The pod's eth0 must see its own MAC as the destination, or it
 * drops the packet as another host's. It returns -1, leaving the packet to the stack, when the
 * TTL runs out: the stack sends the time-exceeded error. */
static __always_inline int ep_deliver(struct __sk_buff *skb, struct endpoint_info *ep,
				      __u32 reason)
{
	__u32 ifindex = ep->ifindex;
	__u8 macs[2 * ETH_ALEN];

	if (policy_judge(skb, POL_INGRESS) != TC_ACT_OK)
		return TC_ACT_SHOT;
	__builtin_memcpy(macs, ep->pod_mac, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, ep->host_mac, ETH_ALEN);
	if (ttl_dec(skb) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return TC_ACT_SHOT;
	stat_inc(reason);
	return bpf_redirect_peer(ifindex, 0);
}

/* tunnel_encap sends a packet for a remote podCIDR to the node owning it: tunnel key on the
 * skb, then the VXLAN device, which encapsulates to key.remote_ipv4. It returns -1 when no
 * tunnel route matches (or the route names this node), leaving the packet to the caller. */
static __always_inline int tunnel_encap(struct __sk_buff *skb, __be32 daddr)
{
	struct lpm4_key k = { .prefixlen = 32, .addr = daddr };
	struct bpf_tunnel_key key = {};
	__be32 *node, remote;

	node = bpf_map_lookup_elem(&tunnel_routes, &k);
	if (!node)
		return -1;
	remote = *node;
	if (bpf_map_lookup_elem(&node_addrs, &remote))
		return -1;
	if (ttl_dec(skb) < 0)
		return -1;
	key.tunnel_id = tunnel_vni;
	key.remote_ipv4 = bpf_ntohl(remote); /* host order, unlike everything else */
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return TC_ACT_SHOT;
	stat_inc(STAT_TUNNEL_ENCAP);
	return bpf_redirect(tunnel_ifindex, 0);
}

/* pod_route routes a packet a pod sent (after any service translation): to a local pod
 * directly, to a remote podCIDR through the tunnel in VXLAN mode. It returns -1 for
 * everything else (the node, the outside, remote pods in native mode). */
static __always_inline int pod_route(struct __sk_buff *skb, __be32 daddr)
{
	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, &daddr);

	if (ep)
		return ep_deliver(skb, ep, STAT_REDIRECT_PEER);
	if (routing_mode == ROUTING_VXLAN)
		return tunnel_encap(skb, daddr);
	return -1;
}
