package addons

import (
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

func testConfig() Config {
	return Config{DNSIP: netip.MustParseAddr("10.96.0.10"), Domain: "cluster.local", Upstream: []string{DefaultUpstream}}
}

// typed converts o into out, refusing any field the API type does not
// have: a misspelt field in the manifest would otherwise be dropped by the
// API server without a word.
func typed(t *testing.T, o *unstructured.Unstructured, out any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, out, true); err != nil {
		t.Fatalf("%s: %v", describe(o), err)
	}
}

// rendered is the CoreDNS add-on's objects, by kind.
type rendered struct {
	sa         corev1.ServiceAccount
	role       rbacv1.ClusterRole
	binding    rbacv1.ClusterRoleBinding
	cm         corev1.ConfigMap
	deployment appsv1.Deployment
	svc        corev1.Service
}

func render(t *testing.T, cfg Config) rendered {
	t.Helper()
	objs, err := Render(CoreDNS, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	// Applied in order: the Deployment's account and its rights first.
	want := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("kinds %v, want %v", kinds, want)
	}
	var r rendered
	for i, out := range []any{&r.sa, &r.role, &r.binding, &r.cm, &r.deployment, &r.svc} {
		typed(t, objs[i], out)
	}
	return r
}

func TestRenderCoreDNS(t *testing.T) {
	r := render(t, testConfig())
	if r.svc.Name != "kube-dns" || r.svc.Namespace != "kube-system" || r.svc.Spec.ClusterIP != "10.96.0.10" {
		t.Errorf("Service %s/%s at %q, want kube-system/kube-dns at 10.96.0.10", r.svc.Namespace, r.svc.Name, r.svc.Spec.ClusterIP)
	}
	var ports []string
	for _, p := range r.svc.Spec.Ports {
		ports = append(ports, p.Name+"/"+string(p.Protocol)+"/"+strings.TrimSpace(p.TargetPort.String()))
	}
	if want := []string{"dns/UDP/0", "dns-tcp/TCP/0", "metrics/TCP/0"}; !slices.Equal(ports, want) {
		t.Errorf("Service ports %v, want %v (target port defaulted to port)", ports, want)
	}
	if r.svc.Spec.Selector["k8s-app"] != "kube-dns" || r.deployment.Spec.Template.Labels["k8s-app"] != "kube-dns" {
		t.Errorf("Service selector %v and pod labels %v must meet on k8s-app=kube-dns", r.svc.Spec.Selector, r.deployment.Spec.Template.Labels)
	}
	pod := r.deployment.Spec.Template.Spec
	c := pod.Containers[0]
	if c.Image != CoreDNSImage || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s (%s), want %s IfNotPresent: it is made on the nodes", c.Image, c.ImagePullPolicy, CoreDNSImage)
	}
	if pod.DNSPolicy != corev1.DNSDefault || pod.ServiceAccountName != r.sa.Name {
		t.Errorf("dnsPolicy %s, account %s; want Default, %s", pod.DNSPolicy, pod.ServiceAccountName, r.sa.Name)
	}
	if c.ReadinessProbe.HTTPGet.Path != "/ready" || c.ReadinessProbe.HTTPGet.Port.IntValue() != 8181 ||
		c.LivenessProbe.HTTPGet.Path != "/health" || c.LivenessProbe.HTTPGet.Port.IntValue() != 8080 {
		t.Errorf("probes: readiness %+v liveness %+v", c.ReadinessProbe.HTTPGet, c.LivenessProbe.HTTPGet)
	}
	if *r.deployment.Spec.Replicas != 2 {
		t.Errorf("%d replicas, want 2", *r.deployment.Spec.Replicas)
	}
	if sc := pod.TopologySpreadConstraints; len(sc) != 1 || sc[0].TopologyKey != "kubernetes.io/hostname" ||
		sc[0].WhenUnsatisfiable != corev1.DoNotSchedule || sc[0].LabelSelector.MatchLabels["k8s-app"] != "kube-dns" {
		t.Errorf("spread %+v, want the replicas on different nodes", sc)
	}
	if r.binding.RoleRef.Name != r.role.Name || r.binding.Subjects[0].Name != r.sa.Name || r.binding.Subjects[0].Namespace != r.sa.Namespace {
		t.Errorf("binding %+v does not bind role %s to %s/%s", r.binding, r.role.Name, r.sa.Namespace, r.sa.Name)
	}
	if cm := pod.Volumes[0].ConfigMap; cm == nil || cm.Name != r.cm.Name {
		t.Errorf("volume %+v, want ConfigMap %s", pod.Volumes[0], r.cm.Name)
	}
	corefile := r.cm.Data["Corefile"]
	if !strings.HasPrefix(corefile, ".:53 {\n") {
		t.Errorf("with an upstream, one block serves every name:\n%s", corefile)
	}
	for _, want := range []string{"kubernetes cluster.local in-addr.arpa ip6.arpa {", "fallthrough in-addr.arpa ip6.arpa",
		"forward . /etc/resolv.conf {", "ready\n", "health {"} {
		if !strings.Contains(corefile, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, corefile)
		}
	}
	checkBraces(t, corefile)
}

// The role lets CoreDNS list and watch what its kubernetes plugin reads.
func TestRenderCoreDNSRules(t *testing.T) {
	r := render(t, testConfig())
	can := map[string]bool{}
	for _, rule := range r.role.Rules {
		for _, res := range rule.Resources {
			if slices.Contains(rule.Verbs, "list") && slices.Contains(rule.Verbs, "watch") {
				can[res] = true
			}
		}
	}
	for _, res := range []string{"endpointslices", "services", "pods", "namespaces"} {
		if !can[res] {
			t.Errorf("role cannot list and watch %s: %+v", res, r.role.Rules)
		}
	}
}

func TestRenderCoreDNSSettings(t *testing.T) {
	cfg := Config{DNSIP: netip.MustParseAddr("10.43.0.10"), Domain: "corp.example", Image: "example.test/dns/coredns:v9"}
	r := render(t, cfg)
	corefile := r.cm.Data["Corefile"]
	if r.svc.Spec.ClusterIP != "10.43.0.10" || !strings.Contains(corefile, "kubernetes corp.example in-addr.arpa") ||
		r.deployment.Spec.Template.Spec.Containers[0].Image != "example.test/dns/coredns:v9" {
		t.Errorf("settings not rendered: IP %s, image %s, Corefile:\n%s", r.svc.Spec.ClusterIP,
			r.deployment.Spec.Template.Spec.Containers[0].Image, corefile)
	}
	// No upstream: the cluster's zones in a block of their own, nothing
	// forwarded (so no loop to detect), every other name NXDOMAIN.
	for _, absent := range []string{"forward", "loop", "fallthrough"} {
		if strings.Contains(corefile, absent) {
			t.Errorf("Corefile without upstream has %q:\n%s", absent, corefile)
		}
	}
	if !strings.HasPrefix(corefile, "corp.example:53 in-addr.arpa:53 ip6.arpa:53 {\n") ||
		!strings.Contains(corefile, "\n.:53 {\n") || !strings.Contains(corefile, "template ANY ANY {\n        rcode NXDOMAIN\n") {
		t.Errorf("Corefile without upstream does not answer outside names NXDOMAIN in a block of their own:\n%s", corefile)
	}
	checkBraces(t, corefile)

	cfg.Upstream = []string{"192.0.2.53", "[2001:db8::53]:5353"}
	corefile = render(t, cfg).cm.Data["Corefile"]
	if !strings.Contains(corefile, "forward . 192.0.2.53 [2001:db8::53]:5353 {") || !strings.Contains(corefile, "\n    loop\n") {
		t.Errorf("Corefile does not forward to both upstreams:\n%s", corefile)
	}
	checkBraces(t, corefile)
}

// checkBraces checks that every block of the Corefile closes, each on a
// line of its own, and that its directives sit at one indentation.
func checkBraces(t *testing.T, corefile string) {
	t.Helper()
	depth := 0
	for _, l := range strings.Split(strings.TrimRight(corefile, "\n"), "\n") {
		trimmed := strings.TrimSpace(l)
		if trimmed == "}" {
			depth--
		}
		if indent := len(l) - len(strings.TrimLeft(l, " ")); indent != 4*depth {
			t.Errorf("line %q indented %d, want %d", l, indent, 4*depth)
		}
		if strings.HasSuffix(trimmed, "{") {
			depth++
		}
	}
	if depth != 0 {
		t.Errorf("Corefile's blocks do not close (depth %d):\n%s", depth, corefile)
	}
}

func TestRenderInvalid(t *testing.T) {
	for name, c := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"no address":       {func(c *Config) { c.DNSIP = netip.Addr{} }, "address not set"},
		"domain uppercase": {func(c *Config) { c.Domain = "Cluster.Local" }, `cluster domain "Cluster.Local"`},
		"domain injection": {func(c *Config) { c.Domain = "cluster.local {\n}" }, "cluster domain"},
		"domain empty":     {func(c *Config) { c.Domain = "" }, "cluster domain"},
		"image":            {func(c *Config) { c.Image = "Bad Image" }, `CoreDNS image "Bad Image"`},
		"upstream":         {func(c *Config) { c.Upstream = []string{"/etc/resolv.conf }"} }, "upstream DNS"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig()
			c.mod(&cfg)
			_, err := Render(CoreDNS, cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Render: %v, want an error naming %q", err, c.want)
			}
		})
	}
	if _, err := Render("dashboard", testConfig()); err == nil || !strings.Contains(err.Error(), "dashboard") {
		t.Errorf("Render of an unknown add-on: %v", err)
	}
}

func TestParseUpstream(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want []string
	}{
		{nil, []string{DefaultUpstream}},
		{[]string{"none"}, nil},
		{[]string{"192.0.2.1", "192.0.2.2:5353", "2001:db8::1", "[2001:db8::1]:53"}, []string{"192.0.2.1", "192.0.2.2:5353", "2001:db8::1", "[2001:db8::1]:53"}},
		{[]string{"/run/systemd/resolve/resolv.conf"}, []string{"/run/systemd/resolve/resolv.conf"}},
	} {
		got, err := ParseUpstream(c.in)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseUpstream(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range [][]string{{"none", "192.0.2.1"}, {"dns.example"}, {"192.0.2.1:dns"}, {"resolv.conf"}, {"/etc/resolv conf"}, {""}} {
		if got, err := ParseUpstream(in); err == nil || !strings.Contains(err.Error(), "--upstream-dns") {
			t.Errorf("ParseUpstream(%q) = %q, %v; want an error naming --upstream-dns", in, got, err)
		}
	}
}

func TestCheckNames(t *testing.T) {
	if err := CheckNames([]string{"coredns", "coredns"}); err != nil {
		t.Errorf("CheckNames(coredns): %v", err)
	}
	err := CheckNames([]string{"coredns", "core-dns"})
	if err == nil || !strings.Contains(err.Error(), `"core-dns"`) || !strings.Contains(err.Error(), "coredns") {
		t.Errorf("CheckNames(core-dns) = %v, want an error naming it and the add-ons there are", err)
	}
}

// The image's tag is the CoreDNS version make build compiles.
func TestCoreDNSImageMatchesBuild(t *testing.T) {
	gomod, err := os.ReadFile("../../tools/coredns/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require github\.com/coredns/coredns (v\S+)$`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("tools/coredns/go.mod requires no github.com/coredns/coredns")
	}
	if tag := CoreDNSImage[strings.LastIndex(CoreDNSImage, ":")+1:]; tag != string(m[1]) {
		t.Errorf("CoreDNSImage tag %s, but tools/coredns builds %s", tag, m[1])
	}
}
