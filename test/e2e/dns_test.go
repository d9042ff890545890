//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/capstan-net/capstan/cluster"
)

// The cluster DNS `capstan up` gives its server and agents.
const (
	dnsIP     = "10.96.0.10"
	dnsDomain = "cluster.local"
)

// dnsScenarios show cluster DNS doing what users expect of it. Names
// resolve in every cluster (their queries cross each service mode and
// routing); the record kinds and pod settings, which are CoreDNS's and the
// kubelet's, in the full one.
func dnsScenarios() []scenario {
	return []scenario{
		{"DNS: <svc>.<ns>.svc.cluster.local and short names resolve from every node", nil, dnsServiceNames},
		{"DNS: a name outside the cluster fails at once", nil, dnsOutsideName},
		{"DNS: headless Service per-pod records, StatefulSet pod hostnames, SRV for named ports", full, dnsRecords},
		{"DNS: dnsPolicy ClusterFirst, Default, and None with dnsConfig", full, dnsPolicies},
		{"DNS: a node's pods still resolve after its agent restarts", full, dnsAfterAgentRestart},
	}
}

// waitCoreDNS waits for the add-on: kube-dns at the cluster DNS address and
// both CoreDNS replicas ready.
func (e *env) waitCoreDNS(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := eventually(2*time.Minute, func() error {
		svc, err := e.cs.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if svc.Spec.ClusterIP != dnsIP {
			return fmt.Errorf("kube-dns at %s, want %s", svc.Spec.ClusterIP, dnsIP)
		}
		d, err := e.cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 2 {
			return fmt.Errorf("coredns: %d of 2 replicas ready", d.Status.ReadyReplicas)
		}
		return nil
	}); err != nil {
		out, _ := e.c.Kubectl("-n", "kube-system", "get", "pods,endpointslices", "-o", "wide")
		t.Fatalf("%v\n%s", err, out)
	}
}

// nameAddress is one answer of busybox nslookup: "Name:\t<fqdn>" and
// "Address: <ip>" on the next line.
var nameAddress = regexp.MustCompile(`Name:\s*(\S+)\s*\n\s*Address(?: \d+)?:\s*(\S+)`)

// lookup asks the cluster DNS for name's A records from pod with busybox
// nslookup (through the pod's resolv.conf, search path included) and
// returns the addresses of each name answered. nslookup's exit status is
// not looked at: it fails when any name of the search path has no answer.
func (e *env) lookup(pod, name string) (map[string][]string, string) {
	out, _ := e.kubectl("exec", pod, "--", "nslookup", "-type=a", name)
	got := map[string][]string{}
	for _, m := range nameAddress.FindAllStringSubmatch(out, -1) {
		got[m[1]] = append(got[m[1]], m[2])
	}
	return got, out
}

// resolves checks that name, looked up from pod, is fqdn with exactly the
// addresses want, trying for a while: records follow the API within seconds.
func (e *env) resolves(t *testing.T, pod, name, fqdn string, want ...string) {
	t.Helper()
	e.resolvesWithin(t, 30*time.Second, pod, name, fqdn, want...)
}

func (e *env) resolvesWithin(t *testing.T, timeout time.Duration, pod, name, fqdn string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if err := eventually(timeout, func() error {
		got, out := e.lookup(pod, name)
		addrs := got[fqdn]
		slices.Sort(addrs)
		if !slices.Equal(addrs, want) {
			return fmt.Errorf("%s: nslookup %s gave %s %v, want %v:\n%s", pod, name, fqdn, addrs, want, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func svcName(name, ns string) string { return name + "." + ns + ".svc." + dnsDomain }

func dnsServiceNames(t *testing.T, e *env) {
	e.waitCoreDNS(t)
	echo := e.clusterIP(t, "echo")
	fqdn := svcName("echo", e.ns)
	for _, client := range []string{"client-1", "client-2", "client-3"} {
		// busybox's nslookup tries the search path for names without a dot.
		for _, name := range []string{fqdn, "echo"} {
			e.resolves(t, client, name, fqdn, echo)
		}
		e.resolves(t, client, svcName("kubernetes", "default"), svcName("kubernetes", "default"), "10.96.0.1")
		// Go's resolver (capstan-echo is static) tries it as libc's do, for
		// names of fewer dots than ndots (5): <svc> and <svc>.<ns>.
		for _, name := range []string{"echo", "echo." + e.ns} {
			if out, err := e.connect(client, "http", name+":80"); err != nil || !strings.HasPrefix(out, "echo-") {
				t.Fatalf("%s: http://%s:80 (Go's resolver): %v %q", client, name, err, out)
			}
		}
	}
}

// busyboxTime is what busybox's time prints: "real\t0m 0.01s".
var busyboxTime = regexp.MustCompile(`real\s+(\d+)m\s*([0-9.]+)s`)

// dnsOutsideName: the cluster has no way out, and its DNS has no upstream,
// so a name beyond the cluster must fail at once, as a name that does not
// exist (NXDOMAIN, which clients do not retry), rather than after the
// resolvers' timeouts (5 s a try).
func dnsOutsideName(t *testing.T, e *env) {
	e.waitCoreDNS(t)
	out, _ := e.kubectl("exec", "client-1", "--", "time", "nslookup", "-type=a", "capstan-e2e.example.com")
	m := busyboxTime.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("nslookup under time printed no time:\n%s", out)
	}
	mins, _ := strconv.Atoi(m[1])
	secs, _ := strconv.ParseFloat(m[2], 64)
	took := time.Duration(mins)*time.Minute + time.Duration(secs*float64(time.Second))
	if nameAddress.MatchString(out) || !strings.Contains(out, "NXDOMAIN") {
		t.Fatalf("an outside name did not get NXDOMAIN:\n%s", out)
	}
	if took > 2*time.Second {
		t.Fatalf("nslookup of an outside name took %s, want a failure within 2s:\n%s", took, out)
	}
	// Go's resolver, through the search path and every attempt it makes.
	start := time.Now()
	if out, err := e.kubectl("exec", "client-1", "--", "/capstan-echo", "connect", "--timeout", "20s",
		"--protocol", "tcp", "capstan-e2e.example.com:80"); err == nil || !strings.Contains(out, "no such host") {
		t.Fatalf("connect to an outside name: %v %q, want Go's \"no such host\"", err, out)
	}
	// kubectl exec itself takes a fraction of a second.
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Go's resolver took %s (with kubectl exec) to fail on an outside name", d)
	}
	t.Logf("busybox nslookup failed in %s, Go's resolver (with kubectl exec) in %s", took, time.Since(start).Round(time.Millisecond))
}

// dnsRecords checks the records CoreDNS builds from Services and pods: a
// headless Service's A records and per-pod names, a StatefulSet's stable
// pod names under its governing Service, and SRV records for named ports.
func dnsRecords(t *testing.T, e *env) {
	e.waitCoreDNS(t)
	ctx := context.Background()
	headless := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo-headless"}, Spec: corev1.ServiceSpec{
		ClusterIP: corev1.ClusterIPNone, Selector: echoLabels, Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}
	if _, err := e.cs.CoreV1().Services(e.ns).Create(ctx, headless, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer e.cs.CoreV1().Services(e.ns).Delete(ctx, headless.Name, metav1.DeleteOptions{})
	pods := e.echoPods(t)
	var ips []string
	for _, p := range pods {
		ips = append(ips, p.Status.PodIP)
	}
	e.resolves(t, "client-1", "echo-headless", svcName("echo-headless", e.ns), ips...)
	// Pods with no hostname are named by their address under the Service.
	perPod := strings.ReplaceAll(ips[0], ".", "-") + "." + svcName("echo-headless", e.ns)
	e.resolves(t, "client-2", perPod, perPod, ips[0])

	web := e.dnsStatefulSet(t, "dnsweb", 2)
	for i, ip := range web {
		name := fmt.Sprintf("dnsweb-%d.%s", i, svcName("dnsweb", e.ns))
		e.resolves(t, "client-3", name, name, ip)
	}

	for _, c := range []struct{ query, want string }{
		// A ClusterIP Service: the Service's port, the Service as target.
		{"_http._tcp." + svcName("echo", e.ns), `service = \d+ \d+ 80 ` + regexp.QuoteMeta(svcName("echo", e.ns))},
		{"_udp._udp." + svcName("echo", e.ns), `service = \d+ \d+ 7000 ` + regexp.QuoteMeta(svcName("echo", e.ns))},
		// A headless one: each pod by its stable name.
		{"_http._tcp." + svcName("dnsweb", e.ns), `service = \d+ \d+ 8080 dnsweb-0\.` + regexp.QuoteMeta(svcName("dnsweb", e.ns))},
		{"_http._tcp." + svcName("dnsweb", e.ns), `service = \d+ \d+ 8080 dnsweb-1\.` + regexp.QuoteMeta(svcName("dnsweb", e.ns))},
	} {
		if err := eventually(30*time.Second, func() error {
			out, _ := e.kubectl("exec", "client-1", "--", "nslookup", "-type=srv", c.query)
			if !regexp.MustCompile(c.want).MatchString(out) {
				return fmt.Errorf("SRV %s: want %q in:\n%s", c.query, c.want, out)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// dnsStatefulSet runs n echo pods of a StatefulSet governed by a headless
// Service of its name (removed when t ends) and returns their IPs, by ordinal.
func (e *env) dnsStatefulSet(t *testing.T, name string, n int32) []string {
	ctx := context.Background()
	labels := map[string]string{"app": name}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
		ClusterIP: corev1.ClusterIPNone, Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: appsv1.StatefulSetSpec{
		Replicas: ptr.To(n), ServiceName: name, PodManagementPolicy: appsv1.ParallelPodManagement,
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{Name: "echo", Image: "capstan.local/echo:1.0", Args: []string{"serve"},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/readyz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}}},
		}},
	}}
	if _, err := e.cs.CoreV1().Services(e.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cs.AppsV1().StatefulSets(e.ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cs.AppsV1().StatefulSets(e.ns).Delete(ctx, name, metav1.DeleteOptions{})
		e.cs.CoreV1().Services(e.ns).Delete(ctx, name, metav1.DeleteOptions{})
	})
	ips := make([]string, n)
	if err := eventually(2*time.Minute, func() error {
		for i := range ips {
			p, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, fmt.Sprintf("%s-%d", name, i), metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !podReady(p) {
				return fmt.Errorf("%s not ready", p.Name)
			}
			ips[i] = p.Status.PodIP
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ips
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// dnsPolicies checks the resolv.conf the kubelet writes for each dnsPolicy,
// and that names resolve through the ones that point at the cluster DNS.
func dnsPolicies(t *testing.T, e *env) {
	e.waitCoreDNS(t)
	sleeper := func(name string, policy corev1.DNSPolicy, conf *corev1.PodDNSConfig) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](1), DNSPolicy: policy, DNSConfig: conf,
			Containers: []corev1.Container{busybox("c", "sleep", "3600")}}}
	}
	none := &corev1.PodDNSConfig{Nameservers: []string{dnsIP}, Searches: []string{e.ns + ".svc." + dnsDomain, "example.test"},
		Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("2")}}}
	pods := []*corev1.Pod{
		sleeper("dns-clusterfirst", corev1.DNSClusterFirst, nil),
		sleeper("dns-default", corev1.DNSDefault, nil),
		sleeper("dns-none", corev1.DNSNone, none),
	}
	for _, p := range pods {
		e.runPod(t, p)
	}
	search := fmt.Sprintf("search %s.svc.%s svc.%s %s", e.ns, dnsDomain, dnsDomain, dnsDomain)
	hostNameservers := nameservers(t, readHostResolvConf(t))
	for pod, want := range map[string][]string{
		"dns-clusterfirst": {"nameserver " + dnsIP, search, "options ndots:5"},
		"dns-none":         {"nameserver " + dnsIP, "search " + e.ns + ".svc." + dnsDomain + " example.test", "options ndots:2"},
	} {
		conf, err := e.kubectl("exec", pod, "--", "cat", "/etc/resolv.conf")
		if err != nil {
			t.Fatalf("%s: %v %s", pod, err, conf)
		}
		// The kubelet's order of lines is its own.
		got := strings.Split(strings.TrimSpace(conf), "\n")
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s resolv.conf:\n%s\nwant:\n%s", pod, conf, strings.Join(want, "\n"))
		}
	}
	// Default: the node's resolvers, as if the pod ran on the node.
	conf, err := e.kubectl("exec", "dns-default", "--", "cat", "/etc/resolv.conf")
	if err != nil {
		t.Fatalf("dns-default: %v %s", err, conf)
	}
	if got := nameservers(t, conf); !slices.Equal(got, hostNameservers) || strings.Contains(conf, "svc."+dnsDomain) {
		t.Errorf("dnsPolicy Default resolv.conf:\n%s\nwant the node's nameservers %v and no cluster search path", conf, hostNameservers)
	}
	echo := e.clusterIP(t, "echo")
	e.resolves(t, "dns-clusterfirst", "echo", svcName("echo", e.ns), echo)
	e.resolves(t, "dns-none", "echo", svcName("echo", e.ns), echo)
}

func readHostResolvConf(t *testing.T) string {
	data, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func nameservers(t *testing.T, conf string) []string {
	var out []string
	for _, l := range strings.Split(conf, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "nameserver" {
			out = append(out, f[1])
		}
	}
	if len(out) == 0 {
		t.Fatalf("no nameserver in:\n%s", conf)
	}
	return out
}

// dnsAfterAgentRestart restarts the agent of a node that runs a CoreDNS
// replica. Its pods, CoreDNS included, run on; the kubelet's probes start
// over, so that replica is not ready for a moment, and the other one, on
// another node, answers meanwhile: names resolve from every node, that one
// first, as soon as it is Ready again.
func dnsAfterAgentRestart(t *testing.T, e *env) {
	e.waitCoreDNS(t)
	dnsPods, err := e.cs.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err != nil || len(dnsPods.Items) != 2 {
		t.Fatalf("CoreDNS pods: %v (%d, want 2)", err, len(dnsPods.Items))
	}
	node := dnsPods.Items[0].Spec.NodeName
	if other := dnsPods.Items[1].Spec.NodeName; other == node {
		t.Fatalf("both CoreDNS replicas run on %s: one node's restart stops cluster DNS", node)
	}
	i := slices.Index(e.nodes, node)
	if err := cluster.StopAgent(e.cfg, node); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if _, err := cluster.Up(context.Background(), e.cfg); err != nil {
		t.Fatalf("restart %s: %v", node, err)
	}
	if err := e.c.WaitNodesReady(time.Minute); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	echo := e.clusterIP(t, "echo")
	clients := []string{fmt.Sprintf("client-%d", i+1)}
	for j := range e.nodes {
		if j != i {
			clients = append(clients, fmt.Sprintf("client-%d", j+1))
		}
	}
	for _, client := range clients {
		e.resolvesWithin(t, 5*time.Second, client, "echo", svcName("echo", e.ns), echo)
	}
	t.Logf("restarted %s (runs %s); every node resolved %s after it was Ready", node, dnsPods.Items[0].Name, time.Since(start).Round(time.Millisecond))
}
