package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	netlisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/capstan-net/capstan/dataplane/ebpf"
	"github.com/capstan-net/capstan/dataplane/policy"
	"github.com/capstan-net/capstan/ipam"
)

// policySyncer keeps the policy maps in step with NetworkPolicies, Pods and Namespaces. Every
// sync compiles the whole picture afresh; the datapath writes only what changed.
type policySyncer struct {
	node  string
	dp    *ebpf.Datapath
	pods  corelisters.PodLister
	nodes corelisters.NodeLister
	// nodeAddrs, when set, replace the Node object's addresses (Config.NodeAddrs).
	nodeAddrs []netip.Addr
	nss       corelisters.NamespaceLister
	pols      netlisters.NetworkPolicyLister
	recorder  record.EventRecorder
	log       *slog.Logger
	// reported holds the problems already put on policies as events, so a problem that
	// persists is reported once, and again only after it went away.
	reported map[string]bool
}

func newPolicySyncer(node string, nodeAddrs []netip.Addr, dp *ebpf.Datapath, f informers.SharedInformerFactory,
	recorder record.EventRecorder, log *slog.Logger) *policySyncer {
	return &policySyncer{
		node:      node,
		nodeAddrs: nodeAddrs,
		dp:        dp,
		pods:      f.Core().V1().Pods().Lister(),
		nodes:     f.Core().V1().Nodes().Lister(),
		nss:       f.Core().V1().Namespaces().Lister(),
		pols:      f.Networking().V1().NetworkPolicies().Lister(),
		recorder:  recorder,
		log:       log,
		reported:  make(map[string]bool),
	}
}

// register makes every change to the three kinds call trigger, and returns their HasSynced.
func registerPolicyInformers(f informers.SharedInformerFactory, trigger func()) ([]cache.InformerSynced, error) {
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { trigger() },
		UpdateFunc: func(_, _ any) { trigger() },
		DeleteFunc: func(any) { trigger() },
	}
	var synced []cache.InformerSynced
	for _, inf := range []cache.SharedIndexInformer{
		f.Core().V1().Pods().Informer(),
		f.Core().V1().Namespaces().Informer(),
		f.Networking().V1().NetworkPolicies().Informer(),
		f.Core().V1().Nodes().Informer(), // this node's addresses and pod gateways
	} {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return nil, fmt.Errorf("watch for policy: %w", err)
		}
		synced = append(synced, reg.HasSynced)
	}
	return synced, nil
}

// hosts are the addresses this node's pods may always be reached from: the node's, and the
// gateway of each podCIDR, the source of the node's own connections to its pods.
func (p *policySyncer) hosts() []netip.Addr {
	out := slices.Clone(p.nodeAddrs)
	n, err := p.nodes.Get(p.node)
	if err != nil {
		return out
	}
	if len(p.nodeAddrs) == 0 {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				out = append(out, ip)
			}
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if pfx, err := netip.ParsePrefix(c); err == nil {
			out = append(out, ipam.Gateway(pfx))
		}
	}
	return out
}

func (p *policySyncer) sync(ctx context.Context) error {
	pods, err := p.pods.List(labels.Everything())
	if err != nil {
		return err
	}
	nss, err := p.nss.List(labels.Everything())
	if err != nil {
		return err
	}
	pols, err := p.pols.List(labels.Everything())
	if err != nil {
		return err
	}
	if err := p.dp.SetPolicyHosts(p.hosts()); err != nil {
		return fmt.Errorf("sync policy hosts: %w", err)
	}
	st := policy.Compile(policy.Input{NodeName: p.node, Pods: pods, Namespaces: nss, Policies: pols})
	problems, err := p.dp.SyncPolicy(st)
	if err != nil {
		return fmt.Errorf("sync policy: %w", err)
	}

	// Problems become Warning events on the policies concerned.
	seen := make(map[string]bool)
	report := func(pol types.NamespacedName, reason, msg string) {
		key := pol.String() + "\x00" + reason + "\x00" + msg
		seen[key] = true
		if p.reported[key] {
			return
		}
		obj, err := p.pols.NetworkPolicies(pol.Namespace).Get(pol.Name)
		if err != nil {
			return // gone already
		}
		p.recorder.Event(obj, v1.EventTypeWarning, reason, msg)
		p.log.Warn("policy problem", "policy", pol, "reason", reason, "msg", msg)
	}
	for _, pr := range st.Problems {
		report(pr.Policy, "PolicyInvalid", pr.Message)
	}
	for _, pr := range problems {
		for _, pol := range pr.Policies {
			report(pol, "PolicyMapFull", fmt.Sprintf("node %s, pod %s: %v", p.node, pr.Pod, pr.Err))
		}
	}
	p.reported = seen
	return nil
}

// policyCounters exports the policy programs' per-CPU counters, summed at scrape time.
type policyCounters struct {
	dp                 *ebpf.Datapath
	verdicts, byPolicy *prometheus.Desc
}

func newPolicyCounters(dp *ebpf.Datapath) *policyCounters {
	return &policyCounters{
		dp: dp,
		verdicts: prometheus.NewDesc("capstan_policy_verdicts_total",
			"NetworkPolicy verdicts at pod interfaces: allowed and open count new flows (at a pod a policy "+
				"isolates, or not), denied and reply count packets (dropped, or passed as replies of allowed flows).",
			[]string{"direction", "verdict"}, nil),
		byPolicy: prometheus.NewDesc("capstan_policy_allowed_flows_total",
			"New flows admitted at an isolated pod, by a policy that admits them.",
			[]string{"direction", "policy"}, nil),
	}
}

func (c *policyCounters) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.verdicts
	ch <- c.byPolicy
}

func (c *policyCounters) Collect(ch chan<- prometheus.Metric) {
	verdicts, byPolicy, err := c.dp.PolicyCounters()
	if err != nil {
		return
	}
	for dir, v := range verdicts {
		for verdict, n := range map[string]uint64{"allowed": v.AllowedFlows, "open": v.OpenFlows,
			"denied": v.Denied, "reply": v.Replies} {
			ch <- prometheus.MustNewConstMetric(c.verdicts, prometheus.CounterValue, float64(n), dir, verdict)
		}
	}
	for pol, n := range byPolicy {
		ch <- prometheus.MustNewConstMetric(c.byPolicy, prometheus.CounterValue, float64(n[0]), "ingress", pol.String())
		ch <- prometheus.MustNewConstMetric(c.byPolicy, prometheus.CounterValue, float64(n[1]), "egress", pol.String())
	}
}
