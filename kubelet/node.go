package kubelet

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Version is the kubelet version a Capstan node reports.
const Version = "v1.37.2-capstan"

const (
	leaseDuration      = 40 // seconds, as upstream
	leaseRenewInterval = 10 * time.Second
	// statusReport is how often the node status is written even when
	// nothing changed, as upstream's nodeStatusReportFrequency.
	statusReport = time.Minute
)

// nodeObject builds the node's desired status from the host.
func (k *Kubelet) nodeStatus(old corev1.NodeStatus) corev1.NodeStatus {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(memTotal(), resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(int64(k.cfg.MaxPods), resource.DecimalSI),
	}
	var fs unix.Statfs_t
	if unix.Statfs(k.cfg.NodeDir, &fs) == nil {
		capacity[corev1.ResourceEphemeralStorage] = *resource.NewQuantity(int64(fs.Blocks)*fs.Bsize, resource.BinarySI)
	}
	st := corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity.DeepCopy(),
		Phase:       "",
		DaemonEndpoints: corev1.NodeDaemonEndpoints{
			KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(k.cfg.KubeletPort)},
		},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID:               readTrim("/etc/machine-id"),
			BootID:                  readTrim("/proc/sys/kernel/random/boot_id"),
			KernelVersion:           kernelVersion(),
			OSImage:                 osImage(),
			ContainerRuntimeVersion: k.cfg.RuntimeVersion,
			KubeletVersion:          Version,
			OperatingSystem:         runtime.GOOS,
			Architecture:            runtime.GOARCH,
		},
		Images:          old.Images,
		VolumesInUse:    old.VolumesInUse,
		VolumesAttached: old.VolumesAttached,
		Config:          old.Config,
	}
	for _, ip := range k.cfg.NodeIPs {
		st.Addresses = append(st.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip.String()})
	}
	st.Addresses = append(st.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: k.cfg.NodeName})

	now := secs(time.Now())
	netErr := ""
	if k.cfg.Network != nil {
		if err := k.cfg.Network.Ready(); err != nil {
			netErr = err.Error()
		}
	}
	conds := []corev1.NodeCondition{
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status"},
	}
	if netErr != "" {
		conds[3] = corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady",
			Message: "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:" + netErr}
	}
	for i := range conds {
		conds[i].LastHeartbeatTime = now
		conds[i].LastTransitionTime = now
		for _, o := range old.Conditions {
			if o.Type == conds[i].Type && o.Status == conds[i].Status {
				conds[i].LastTransitionTime = o.LastTransitionTime
			}
		}
	}
	st.Conditions = conds
	return st
}

func (k *Kubelet) nodeLabels() map[string]string {
	return map[string]string{
		corev1.LabelHostname:      k.cfg.NodeName,
		corev1.LabelOSStable:      runtime.GOOS,
		corev1.LabelArchStable:    runtime.GOARCH,
		"beta.kubernetes.io/os":   runtime.GOOS,
		"beta.kubernetes.io/arch": runtime.GOARCH,
	}
}

// registerNode creates the Node, or updates its labels and status if it
// exists (an agent restart, or a node rejoining).
func (k *Kubelet) registerNode(ctx context.Context) error {
	nodes := k.cfg.Client.CoreV1().Nodes()
	for {
		node, err := nodes.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: k.cfg.NodeName, Labels: k.nodeLabels()}}
			node.Status = k.nodeStatus(corev1.NodeStatus{})
			created, err := nodes.Create(ctx, node, metav1.CreateOptions{})
			if err == nil {
				// Create ignores status; write it now.
				created.Status = k.nodeStatus(corev1.NodeStatus{})
				_, err = nodes.UpdateStatus(ctx, created, metav1.UpdateOptions{})
			}
			if err == nil || apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
				if err == nil {
					k.cfg.Log.Info("registered node", "node", k.cfg.NodeName)
					return nil
				}
				continue
			}
			return fmt.Errorf("register node: %w", err)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			k.cfg.Log.Warn("get node", "err", err)
			time.Sleep(time.Second)
			continue
		}
		changed := false
		if node.Labels == nil {
			node.Labels = map[string]string{}
		}
		for key, v := range k.nodeLabels() {
			if node.Labels[key] != v {
				node.Labels[key] = v
				changed = true
			}
		}
		if changed {
			if node, err = nodes.Update(ctx, node, metav1.UpdateOptions{}); err != nil {
				if apierrors.IsConflict(err) {
					continue
				}
				return fmt.Errorf("update node labels: %w", err)
			}
		}
		node.Status = k.nodeStatus(node.Status)
		if _, err := nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			if apierrors.IsConflict(err) {
				continue
			}
			return fmt.Errorf("update node status: %w", err)
		}
		k.cfg.Log.Info("node already registered; updated", "node", k.cfg.NodeName)
		return nil
	}
}

// runNodeStatus renews the Lease every 10s, writes the node's status when
// it changes (or every minute), and writes the CNI configuration once the
// node has a podCIDR.
func (k *Kubelet) runNodeStatus(ctx context.Context) {
	var lastReport time.Time
	var lastStatus corev1.NodeStatus
	for {
		if err := k.renewLease(ctx); err != nil && ctx.Err() == nil {
			k.cfg.Log.Warn("renew lease", "err", err)
		}
		node, err := k.cfg.Client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
		if err == nil {
			k.ensureCNIConfig(node)
			st := k.nodeStatus(node.Status)
			cmp := st.DeepCopy()
			for i := range cmp.Conditions {
				cmp.Conditions[i].LastHeartbeatTime = metav1.Time{}
			}
			if time.Since(lastReport) > statusReport || !apiequality.Semantic.DeepEqual(*cmp, lastStatus) {
				node.Status = st
				if _, err := k.cfg.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err == nil {
					lastReport, lastStatus = time.Now(), *cmp
				} else if ctx.Err() == nil {
					k.cfg.Log.Warn("update node status", "err", err)
				}
			}
		} else if ctx.Err() == nil {
			k.cfg.Log.Warn("get node", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(leaseRenewInterval):
		}
	}
}

// ensureCNIConfig writes the node's CNI configuration for its podCIDR.
func (k *Kubelet) ensureCNIConfig(node *corev1.Node) {
	if k.cfg.CNIConfDir == "" || node.Spec.PodCIDR == "" {
		return
	}
	changed, err := WriteCNIConfig(k.cfg.CNIConfDir, node.Spec.PodCIDR, k.cfg.IPAMDir, k.cfg.EndpointsDir, k.cfg.MTU)
	if err != nil {
		k.cfg.Log.Warn("write cni config", "err", err)
		return
	}
	if changed {
		k.cfg.Log.Info("wrote cni config", "podCIDR", node.Spec.PodCIDR, "dir", k.cfg.CNIConfDir)
		// Pods waiting for a network can go on now.
		k.mu.Lock()
		for _, w := range k.workers {
			w.kick()
		}
		k.mu.Unlock()
	}
}

func (k *Kubelet) renewLease(ctx context.Context) error {
	leases := k.cfg.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(k.cfg.NodeName),
				LeaseDurationSeconds: ptr.To(int32(leaseDuration)),
				RenewTime:            &now,
			},
		}
		if node, err := k.cfg.Client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{}); err == nil {
			l.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}
		}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	l.Spec.HolderIdentity = ptr.To(k.cfg.NodeName)
	l.Spec.LeaseDurationSeconds = ptr.To(int32(leaseDuration))
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

func kernelVersion() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func osImage() string {
	f, err := os.Open("/etc/os-release")
	if err != nil {
		return runtime.GOOS
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return runtime.GOOS
}
