//go:build netpol

package netpol_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// The standard model of the upstream NetworkPolicy e2e suite: namespaces x, y
// and z (labelled ns=<name>), pods a, b and c in each (labelled pod=<name>),
// every pod serving ports 80 and 81 on TCP and UDP under named container
// ports, and a Service per pod.
var (
	modelNamespaces = []string{"x", "y", "z"}
	modelPods       = []string{"a", "b", "c"}
	servedPorts     = []int32{80, 81}
)

// metadataNameLabel is the label the API server puts on every namespace.
const metadataNameLabel = "kubernetes.io/metadata.name"

// echoImage is the test image whose entrypoint is capstan-echo.
const echoImage = "capstan.local/echo:1.0"

// podID names a model pod by its namespace's and its own base name (x/a).
type podID struct{ ns, name string }

func (p podID) String() string { return p.ns + "/" + p.name }

// model is the model's objects as the cases have changed them: cases refer
// to namespaces by base name (x), the cluster knows them by their real
// name (x-1a2b), so that runs on a shared cluster do not meet.
type model struct {
	real      map[string]string // namespace base name -> real name
	pods      []podID           // x/a, x/b, x/c, y/a, ...
	podLabels map[podID]map[string]string
	nsLabels  map[string]map[string]string
	// policies in force, by "ns/name" (base namespace name).
	policies map[string]*networkingv1.NetworkPolicy

	// Filled in once the pods run.
	podIP   map[podID]string
	svcIP   map[podID]string
	node    map[podID]string
	podCIDR string // a prefix holding every pod IP
}

func newModel(suffix string) *model {
	m := &model{real: map[string]string{}, podIP: map[podID]string{}, svcIP: map[podID]string{}, node: map[podID]string{}}
	for _, ns := range modelNamespaces {
		m.real[ns] = ns + suffix
		for _, p := range modelPods {
			m.pods = append(m.pods, podID{ns, p})
		}
	}
	m.reset()
	return m
}

// initialPodLabels and initialNSLabels are the labels the model starts with.
func initialPodLabels(p podID) map[string]string { return map[string]string{"pod": p.name} }

func (m *model) initialNSLabels(ns string) map[string]string {
	return map[string]string{"ns": ns, metadataNameLabel: m.real[ns]}
}

// reset forgets every policy and label change.
func (m *model) reset() {
	m.policies = map[string]*networkingv1.NetworkPolicy{}
	m.podLabels = map[podID]map[string]string{}
	m.nsLabels = map[string]map[string]string{}
	for _, p := range m.pods {
		m.podLabels[p] = initialPodLabels(p)
	}
	for _, ns := range modelNamespaces {
		m.nsLabels[ns] = m.initialNSLabels(ns)
	}
}

func (m *model) index(p podID) int { return slices.Index(m.pods, p) }

// baseNS is the base name of a real namespace name.
func (m *model) baseNS(real string) string {
	for base, r := range m.real {
		if r == real {
			return base
		}
	}
	return real
}

// target is the address a probe of col from any pod to p goes to.
func (m *model) target(p podID, col column) string {
	ip := m.podIP[p]
	if col.svc {
		ip = m.svcIP[p]
	}
	return fmt.Sprintf("%s:%s:%d", strings.ToLower(string(col.proto)), ip, col.port)
}

// containerPorts are the named ports of the container serving port.
func containerPorts(port int32) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
		out = append(out, corev1.ContainerPort{
			Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))), ContainerPort: port, Protocol: proto})
	}
	return out
}

// allContainerPorts are every model pod's named ports.
func allContainerPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, port := range servedPorts {
		out = append(out, containerPorts(port)...)
	}
	return out
}

// podObject is a model pod: one capstan-echo container per port, serving
// TCP and UDP on it, ready while its TCP port accepts (the kubelet's probes
// come from the node, which policies never block).
func (m *model) podObject(p podID, node string) *corev1.Pod {
	pod := &corev1.Pod{}
	pod.Name, pod.Namespace, pod.Labels = p.name, m.real[p.ns], maps.Clone(m.podLabels[p])
	pod.Spec.NodeName = node
	pod.Spec.TerminationGracePeriodSeconds = ptr.To(int64(1))
	for _, port := range servedPorts {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
			Name: fmt.Sprintf("cont-%d", port), Image: echoImage,
			Args: []string{"serve", "--http-port", "0", "--perf-port", "0",
				"--tcp-port", fmt.Sprint(port), "--udp-port", fmt.Sprint(port)},
			Ports: containerPorts(port),
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}}, PeriodSeconds: 1},
		})
	}
	return pod
}

// serviceObject is the Service of one model pod, on every port it serves.
func (m *model) serviceObject(p podID) *corev1.Service {
	svc := &corev1.Service{}
	svc.Name, svc.Namespace = "s-"+p.name, m.real[p.ns]
	svc.Spec.Selector = initialPodLabels(p)
	for _, cp := range allContainerPorts() {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name: cp.Name, Port: cp.ContainerPort, Protocol: cp.Protocol, TargetPort: intstr.FromString(cp.Name)})
	}
	return svc
}

// coveringPrefix is the longest prefix holding every one of ps.
func coveringPrefix(ps []netip.Prefix) (netip.Prefix, error) {
	if len(ps) == 0 {
		return netip.Prefix{}, fmt.Errorf("no prefixes")
	}
	out := ps[0].Masked()
	for _, p := range ps[1:] {
		if p.Addr().Is4() != out.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("%s and %s are of different families", out, p)
		}
		for !out.Contains(p.Addr()) || out.Bits() > p.Bits() {
			out = netip.PrefixFrom(out.Addr(), out.Bits()-1).Masked()
		}
	}
	return out, nil
}
