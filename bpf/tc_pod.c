//go:build ignore

/* tc programs on a pod's host-side veth: per-packet service translation for traffic the socket
 * programs do not see (pods without socket LB, raw sockets, replies of pods acting as backends),
 * NetworkPolicy (the pod's egress rules on what it sends, after translation; its ingress rules
 * on what the stack delivers to it), and pod routing: pods on this node get packets straight
 * into their netns (bpf_redirect_peer), pods of other nodes through the VXLAN tunnel in VXLAN
 * mode. */

#include "lib/service.h"
#include "lib/route.h"

/* From the pod: replies of the pod as a backend are reverse-translated first, then new and
 * tracked service flows are translated and judged by the pod's egress policy; then the packet
 * is routed. */
SEC("tc")
int tc_pod_ingress(struct __sk_buff *skb)
{
	struct tuple t = {};
	__be32 daddr;
	int rc;

	if (policy_only) {
		/* Traffic to a service is judged after the stack's DNAT, where it enters its pod or
		 * leaves the node; the rest here, before any masquerade hides the pod. */
		if (load_daddr(skb, &daddr) == 0 && in_service_cidr(daddr))
			return TC_ACT_OK;
		return policy_judge(skb, POL_EGRESS);
	}
	if (parse_ipv4(skb, &t) < 0) {
		/* ICMP, later fragments: nothing to translate, routed all the same. */
		if (load_daddr(skb, &daddr) < 0)
			return TC_ACT_OK;
		if (policy_judge(skb, POL_EGRESS) != TC_ACT_OK)
			return TC_ACT_SHOT;
		rc = pod_route(skb, daddr);
		return rc >= 0 ? rc : TC_ACT_OK;
	}
	rc = rev_nat(skb, &t, false);
	if (rc == TC_ACT_SHOT)
		return rc;
	if (rc >= 0) {
		/* The reply now comes from a service address, which the stack's source validation
		 * would refuse: anything pod_route does not take is forwarded by FIB lookup. */
		rc = pod_route(skb, t.daddr);
		return rc >= 0 ? rc : fib_redirect(skb, &t);
	}
	rc = svc_forward(skb, &t, false);
	if (rc != TC_ACT_OK)
		return rc;
	if (policy_judge(skb, POL_EGRESS) != TC_ACT_OK)
		return TC_ACT_SHOT;
	rc = pod_route(skb, t.daddr);
	return rc >= 0 ? rc : TC_ACT_OK;
}

/* To the pod, from the stack: the pod's ingress policy on the addresses as they arrived, then
 * replies of the service flows the pod opened are translated back. */
SEC("tc")
int tc_pod_egress(struct __sk_buff *skb)
{
	struct tuple t = {};
	int rc;

	/* In policy-only mode this is the first hook after the stack's DNAT of a local client's
	 * service flow: the client's egress rules apply here too. */
	if (policy_only && policy_judge(skb, POL_EGRESS) != TC_ACT_OK)
		return TC_ACT_SHOT;
	if (policy_judge(skb, POL_INGRESS) != TC_ACT_OK)
		return TC_ACT_SHOT;
	if (policy_only)
		return TC_ACT_OK;
	if (parse_ipv4(skb, &t) < 0)
		return TC_ACT_OK;
	rc = rev_nat(skb, &t, false);
	return rc >= 0 ? rc : TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
