//go:build ignore

/* tc programs on a pod's host-side veth: per-packet service translation for traffic the socket
 * programs do not see (pods without socket LB, raw sockets, replies of pods acting as backends). */

#include "lib/service.h"

/* From the pod: replies of the pod as a backend are reverse-translated first, then new and
 * tracked service flows are translated. */
SEC("tc")
int tc_pod_ingress(struct __sk_buff *skb)
{
	struct tuple t = {};
	int rc;

	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	rc = rev_nat(skb, &t, true);
	if (rc >= 0)
		return rc;
	return svc_forward(skb, &t, false);
}

/* To the pod: replies of the service flows the pod opened. */
SEC("tc")
int tc_pod_egress(struct __sk_buff *skb)
{
	struct tuple t = {};
	int rc;

	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	rc = rev_nat(skb, &t, false);
	return rc >= 0 ? rc : TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
