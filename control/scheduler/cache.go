package scheduler

import (
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	resourcehelper "k8s.io/component-helpers/resource"
)

// Scoring counts a container without requests as asking for this much, as
// upstream does, so empty pods still spread by load.
const (
	defaultMilliCPURequest int64 = 100
	defaultMemoryRequest   int64 = 200 << 20
)

// podInfo is what filters and scores need from a pod, computed once.
type podInfo struct {
	pod      *corev1.Pod
	requests map[corev1.ResourceName]int64 // cpu in millicores, the rest in units
	// nonZeroCPU and nonZeroMem fill in defaults for missing requests.
	nonZeroCPU, nonZeroMem int64
	ports                  []hostPort
	owner                  types.UID
	// assumed is true from our decision until the informer shows the binding.
	assumed bool
}

type hostPort struct {
	protocol corev1.Protocol
	ip       string
	port     int32
}

func (a hostPort) conflicts(b hostPort) bool {
	if a.protocol != b.protocol || a.port != b.port {
		return false
	}
	return a.ip == b.ip || wildcardIP(a.ip) || wildcardIP(b.ip)
}

func wildcardIP(ip string) bool { return ip == "" || ip == "0.0.0.0" || ip == "::" }

func newPodInfo(pod *corev1.Pod) *podInfo {
	pi := &podInfo{pod: pod, requests: map[corev1.ResourceName]int64{}}
	for name, q := range resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{}) {
		if name == corev1.ResourceCPU {
			pi.requests[name] = q.MilliValue()
		} else {
			pi.requests[name] = q.Value()
		}
	}
	nonZero := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{
		NonMissingContainerRequests: corev1.ResourceList{
			corev1.ResourceCPU:    *resource.NewMilliQuantity(defaultMilliCPURequest, resource.DecimalSI),
			corev1.ResourceMemory: *resource.NewQuantity(defaultMemoryRequest, resource.BinarySI),
		},
	})
	pi.nonZeroCPU = nonZero.Cpu().MilliValue()
	pi.nonZeroMem = nonZero.Memory().Value()
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, p := range c.Ports {
				if p.HostPort <= 0 {
					continue
				}
				proto := p.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				pi.ports = append(pi.ports, hostPort{protocol: proto, ip: p.HostIP, port: p.HostPort})
			}
		}
	}
	if ref := metav1.GetControllerOf(pod); ref != nil {
		pi.owner = ref.UID
	}
	return pi
}

func hasRequiredAntiAffinity(pod *corev1.Pod) bool {
	a := pod.Spec.Affinity
	return a != nil && a.PodAntiAffinity != nil && len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) > 0
}

func hasPodAffinityTerms(pod *corev1.Pod) bool {
	a := pod.Spec.Affinity
	return a != nil && (a.PodAffinity != nil || a.PodAntiAffinity != nil)
}

// nodeInfo is a node plus the pods bound or assumed to be on it.
type nodeInfo struct {
	node *corev1.Node
	pods map[types.UID]*podInfo
	// requested sums pods' requests; nonZero* use scoring defaults.
	requested                  map[corev1.ResourceName]int64
	nonZeroCPU, nonZeroMem     int64
	ownerCount                 map[types.UID]int
	withAffinity               int // pods with any pod (anti-)affinity terms
	images                     map[string]int64
	allocatable                map[corev1.ResourceName]int64
	hasAllocatablePodsResource bool
}

func newNodeInfo() *nodeInfo {
	return &nodeInfo{
		pods:        map[types.UID]*podInfo{},
		requested:   map[corev1.ResourceName]int64{},
		ownerCount:  map[types.UID]int{},
		images:      map[string]int64{},
		allocatable: map[corev1.ResourceName]int64{},
	}
}

func (n *nodeInfo) setNode(node *corev1.Node) {
	n.node = node
	n.allocatable = map[corev1.ResourceName]int64{}
	for name, q := range node.Status.Allocatable {
		if name == corev1.ResourceCPU {
			n.allocatable[name] = q.MilliValue()
		} else {
			n.allocatable[name] = q.Value()
		}
	}
	_, n.hasAllocatablePodsResource = node.Status.Allocatable[corev1.ResourcePods]
	n.images = map[string]int64{}
	for _, img := range node.Status.Images {
		for _, name := range img.Names {
			n.images[normalizeImage(name)] = img.SizeBytes
		}
	}
}

func (n *nodeInfo) addPod(pi *podInfo) {
	n.pods[pi.pod.UID] = pi
	for name, v := range pi.requests {
		n.requested[name] += v
	}
	n.nonZeroCPU += pi.nonZeroCPU
	n.nonZeroMem += pi.nonZeroMem
	if pi.owner != "" {
		n.ownerCount[pi.owner]++
	}
	if hasPodAffinityTerms(pi.pod) {
		n.withAffinity++
	}
}

func (n *nodeInfo) removePod(uid types.UID) {
	pi, ok := n.pods[uid]
	if !ok {
		return
	}
	delete(n.pods, uid)
	for name, v := range pi.requests {
		n.requested[name] -= v
	}
	n.nonZeroCPU -= pi.nonZeroCPU
	n.nonZeroMem -= pi.nonZeroMem
	if pi.owner != "" {
		if n.ownerCount[pi.owner]--; n.ownerCount[pi.owner] <= 0 {
			delete(n.ownerCount, pi.owner)
		}
	}
	if hasPodAffinityTerms(pi.pod) {
		n.withAffinity--
	}
}

// normalizeImage adds the implied ":latest" tag so "nginx" on a pod
// matches "nginx:latest" in node.status.images.
func normalizeImage(name string) string {
	if strings.Contains(name, "@") {
		return name
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		return name
	}
	return name + ":latest"
}

// clusterCache holds nodes and the pods on them, including pods we assumed onto a
// node before the informer reports the binding. It is not safe for
// concurrent use; the Scheduler guards it.
type clusterCache struct {
	nodes map[string]*nodeInfo
	// podNode maps every pod in the cache to its node name.
	podNode map[types.UID]string
	// imageNodes counts nodes holding each image, for image spreading.
	imageNodes map[string]int
}

func newClusterCache() *clusterCache {
	return &clusterCache{nodes: map[string]*nodeInfo{}, podNode: map[types.UID]string{}, imageNodes: map[string]int{}}
}

func (c *clusterCache) nodeInfo(name string) *nodeInfo {
	n, ok := c.nodes[name]
	if !ok {
		n = newNodeInfo()
		c.nodes[name] = n
	}
	return n
}

func (c *clusterCache) setNode(node *corev1.Node) {
	n := c.nodeInfo(node.Name)
	for img := range n.images {
		c.imageNodes[img]--
	}
	n.setNode(node)
	for img := range n.images {
		c.imageNodes[img]++
	}
}

func (c *clusterCache) removeNode(name string) {
	n, ok := c.nodes[name]
	if !ok {
		return
	}
	for img := range n.images {
		c.imageNodes[img]--
	}
	n.images = map[string]int64{}
	n.node = nil
	// Pods still bound to a deleted node keep their nodeInfo until they go,
	// so their removal finds them; a node-less nodeInfo is never scheduled to.
	if len(n.pods) == 0 {
		delete(c.nodes, name)
	}
}

// setPod records a bound pod, replacing an assumption about it.
func (c *clusterCache) setPod(pod *corev1.Pod) {
	c.removePod(pod.UID)
	pi := newPodInfo(pod)
	c.nodeInfo(pod.Spec.NodeName).addPod(pi)
	c.podNode[pod.UID] = pod.Spec.NodeName
}

// assume places pod on node before the API server confirms it.
func (c *clusterCache) assume(pi *podInfo, node string) {
	c.removePod(pi.pod.UID)
	pod := pi.pod.DeepCopy()
	pod.Spec.NodeName = node
	assumed := *pi
	assumed.pod = pod
	assumed.assumed = true
	c.nodeInfo(node).addPod(&assumed)
	c.podNode[pod.UID] = node
}

func (c *clusterCache) isAssumed(uid types.UID) bool {
	name, ok := c.podNode[uid]
	if !ok {
		return false
	}
	pi := c.nodes[name].pods[uid]
	return pi != nil && pi.assumed
}

// forget drops an assumption after a failed binding; a confirmed pod stays.
func (c *clusterCache) forget(uid types.UID) {
	if c.isAssumed(uid) {
		c.removePod(uid)
	}
}

func (c *clusterCache) removePod(uid types.UID) {
	name, ok := c.podNode[uid]
	if !ok {
		return
	}
	delete(c.podNode, uid)
	n := c.nodes[name]
	n.removePod(uid)
	if n.node == nil && len(n.pods) == 0 {
		delete(c.nodes, name)
	}
}

// schedulable lists nodes that exist, sorted by name so that decisions
// depend only on the random source.
func (c *clusterCache) schedulable() []*nodeInfo {
	out := make([]*nodeInfo, 0, len(c.nodes))
	for _, n := range c.nodes {
		if n.node != nil {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].node.Name < out[j].node.Name })
	return out
}
