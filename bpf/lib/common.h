/* Shared includes, constants and packet parsing for every Capstan BPF program. */
#pragma once

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Not in the UAPI headers we build against; spelled out so the build needs no libc headers. */
#define AF_INET 2
#define ECONNREFUSED 111
#define CLOCK_MONOTONIC 1
#define NSEC_PER_SEC 1000000000ULL

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* linux/icmp.h drags in libc's socket headers, so the few ICMP bits are spelled out here. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

/* linux/if_packet.h's skb->pkt_type values. */
#define PACKET_HOST 0

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/*
 * Load-time constants. Go rewrites them in the CollectionSpec before loading, so changing a
 * timeout or the Maglev seed needs no recompile. Every object carries all of them so one
 * loader sets one list.
 */
volatile const __u64 ct_timeout_tcp_ns = 6 * 3600 * NSEC_PER_SEC;
volatile const __u64 ct_timeout_close_ns = 10 * NSEC_PER_SEC;
volatile const __u64 ct_timeout_udp_ns = 60 * NSEC_PER_SEC;
/* Mixed into the client hash so every node of a cluster indexes Maglev tables alike. */
volatile const __u32 lb_hash_seed = 0;
/* Source address for SNAT when the packet's destination is not one of the node's addresses. */
volatile const __be32 snat_fallback_addr = 0;
/* SNAT ports come from above the kernel's default ephemeral range so they never collide with
 * the node's own connections. */
volatile const __u16 snat_port_min = 61000;
volatile const __u16 snat_port_max = 65535;
/* Pod routing across nodes: ROUTING_NATIVE leaves remote pods to the kernel's routes,
 * ROUTING_VXLAN encapsulates them through the collect-metadata device tunnel_ifindex. */
volatile const __u32 routing_mode = 0;
volatile const __u32 tunnel_ifindex = 0;
volatile const __u32 tunnel_vni = 1;
/* Masquerade: traffic from the cluster's pod range to anywhere outside it and outside the
 * service range leaves the node from the node's address. A zero mask is an empty range. */
volatile const __u8 masquerade = 0;
volatile const __be32 cluster_cidr_addr = 0;
volatile const __be32 cluster_cidr_mask = 0;
volatile const __be32 service_cidr_addr = 0;
volatile const __be32 service_cidr_mask = 0;
/* Policy only: Services are iptables' or kube-proxy's, so the pod and node programs leave
 * translation and routing to the stack and only judge NetworkPolicy, where the stack has
 * done its DNAT: on the way into a pod and out of the node. */
volatile const __u8 policy_only = 0;
/* Policy drop events each CPU may emit per second (capstan dp monitor); 0 turns them off. */
volatile const __u32 policy_events_per_sec = 100;

enum routing_modes {
	ROUTING_NATIVE = 0,
	ROUTING_VXLAN = 1,
};

/* A parsed IPv4 TCP/UDP packet; addresses and ports stay in network byte order. */
struct tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u16 l4_off;
	__u16 tot_len;
};

#define L3_OFF ETH_HLEN

/* parse_ipv4 fills t and returns 0 for an unfragmented (or first-fragment-free) IPv4 TCP/UDP
 * packet, and -1 for anything the service path leaves alone. bpf_skb_load_bytes keeps it
 * independent of how much of the skb is linear. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct tuple *t)
{
	struct iphdr ip;
	__be16 ports[2];

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, L3_OFF, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	/* Later fragments carry no ports; the service path cannot translate them. */
	if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;

	t->saddr = ip.saddr;
	t->daddr = ip.daddr;
	t->proto = ip.protocol;
	t->tot_len = bpf_ntohs(ip.tot_len);
	t->l4_off = L3_OFF + ip.ihl * 4;
	t->tcp_flags = 0;
	if (bpf_skb_load_bytes(skb, t->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	t->sport = ports[0];
	t->dport = ports[1];
	if (ip.protocol == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, t->l4_off + 13, &t->tcp_flags, 1) < 0)
		return -1;
	return 0;
}

/* csum_fold turns a 32-bit one's-complement sum into the 16-bit header checksum. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}
