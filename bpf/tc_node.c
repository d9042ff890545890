//go:build ignore

/* tc programs on the node's devices: NodePort and external access to services, with SNAT to
 * the node address unless externalTrafficPolicy is Local, plus reverse translation of replies
 * that come back from remote backends. */

#include "lib/service.h"

SEC("tc")
int tc_node_ingress(struct __sk_buff *skb)
{
	struct tuple t = {};
	int rc;

	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	rc = rev_nat(skb, &t, true);
	if (rc >= 0)
		return rc;
	return svc_forward(skb, &t, true);
}

/* Leaving the node: a reply the stack routed out before any other hook translated it. */
SEC("tc")
int tc_node_egress(struct __sk_buff *skb)
{
	struct tuple t = {};
	int rc;

	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	rc = rev_nat(skb, &t, false);
	return rc >= 0 ? rc : TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
