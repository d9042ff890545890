/* Immediate rejection for services without endpoints: the client's packet is turned into a TCP
 * RST or an ICMP port unreachable in place and sent back out of the device it came in on. */
#pragma once

#include "common.h"

#define IP_DF 0x4000

static __always_inline void reject_ip(struct iphdr *ip, struct tuple *t, __u8 proto, __u16 len)
{
	__builtin_memset(ip, 0, sizeof(*ip));
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(len);
	ip->frag_off = bpf_htons(IP_DF);
	ip->ttl = 64;
	ip->protocol = proto;
	ip->saddr = t->daddr;
	ip->daddr = t->saddr;
	ip->check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)ip, sizeof(*ip), 0));
}

static __always_inline int reject_eth(struct __sk_buff *skb, __u32 new_len)
{
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -1;
	__builtin_memcpy(mac, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, mac, ETH_ALEN);
	if (bpf_skb_change_tail(skb, new_len, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0);
}

struct tcp_pseudo {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
	struct tcphdr th;
};

static __always_inline int reject_tcp(struct __sk_buff *skb, struct tuple *t)
{
	struct tcp_pseudo ph = {};
	struct tcphdr in;
	struct iphdr ip;
	__u32 payload;

	/* Never answer a reset with a reset. */
	if (t->tcp_flags & TCP_FLAG_RST)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, t->l4_off, &in, sizeof(in)) < 0)
		return TC_ACT_SHOT;
	payload = t->tot_len - (t->l4_off - L3_OFF) - in.doff * 4;

	ph.th.source = t->dport;
	ph.th.dest = t->sport;
	ph.th.doff = 5;
	ph.th.rst = 1;
	if (in.ack) {
		ph.th.seq = in.ack_seq;
	} else {
		ph.th.ack = 1;
		ph.th.ack_seq = bpf_htonl(bpf_ntohl(in.seq) + payload + in.syn + in.fin);
	}
	ph.saddr = t->daddr;
	ph.daddr = t->saddr;
	ph.proto = IPPROTO_TCP;
	ph.len = bpf_htons(sizeof(struct tcphdr));
	ph.th.check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0));
	reject_ip(&ip, t, IPPROTO_TCP, sizeof(struct iphdr) + sizeof(struct tcphdr));

	if (reject_eth(skb, ETH_HLEN + sizeof(ip) + sizeof(struct tcphdr)) < 0 ||
	    bpf_skb_store_bytes(skb, L3_OFF, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, L3_OFF + sizeof(ip), &ph.th, sizeof(ph.th), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

struct icmp_unreach {
	struct icmphdr icmp;
	/* The offending IP header and the first 8 bytes after it, as RFC 792 asks. */
	__u8 orig[sizeof(struct iphdr) + 8];
};

static __always_inline int reject_udp(struct __sk_buff *skb, struct tuple *t)
{
	struct icmp_unreach body = {};
	struct iphdr ip;

	/* Quoting a header with options would need a variable-length copy; drop those. */
	if (t->l4_off != L3_OFF + sizeof(struct iphdr))
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, L3_OFF, body.orig, sizeof(body.orig)) < 0)
		return TC_ACT_SHOT;
	body.icmp.type = ICMP_DEST_UNREACH;
	body.icmp.code = ICMP_PORT_UNREACH;
	body.icmp.checksum = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&body, sizeof(body), 0));
	reject_ip(&ip, t, IPPROTO_ICMP, sizeof(ip) + sizeof(body));

	if (reject_eth(skb, ETH_HLEN + sizeof(ip) + sizeof(body)) < 0 ||
	    bpf_skb_store_bytes(skb, L3_OFF, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, L3_OFF + sizeof(ip), &body, sizeof(body), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* reject answers a packet for a service with no endpoints. */
static __always_inline int reject(struct __sk_buff *skb, struct tuple *t)
{
	if (t->proto == IPPROTO_TCP)
		return reject_tcp(skb, t);
	return reject_udp(skb, t);
}
