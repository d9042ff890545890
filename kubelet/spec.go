package kubelet

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"

	"github.com/capstan-net/capstan/internal/atomicfile"
	"github.com/capstan-net/capstan/kubelet/container"
)

// containerSpec turns a pod's container into containerd spec options:
// command and args over the image's, env (with valueFrom), working dir,
// mounts, resources as cgroup limits, and the security context.
func (k *Kubelet) containerSpec(ctx context.Context, pod *corev1.Pod, c *corev1.Container, sb *sandbox, vols map[string]string, img client.Image, id string) ([]oci.SpecOpts, error) {
	env, err := k.containerEnv(ctx, pod, c, sb)
	if err != nil {
		return nil, err
	}
	imgSpec, err := k.cfg.Runtime.ImageSpec(ctx, img)
	if err != nil {
		return nil, fmt.Errorf("image config of %s: %w", img.Name(), err)
	}
	mapping := expansion.MappingFuncFor(envMap(env))
	var args []string
	switch {
	case len(c.Command) > 0:
		args = append(expandAll(c.Command, mapping), expandAll(c.Args, mapping)...)
	case len(c.Args) > 0:
		args = append(append([]string{}, imgSpec.Config.Entrypoint...), expandAll(c.Args, mapping)...)
	default:
		args = append(append([]string{}, imgSpec.Config.Entrypoint...), imgSpec.Config.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("container %q: no command given and image %s has none", c.Name, img.Name())
	}

	hostname := pod.Name
	if pod.Spec.Hostname != "" {
		hostname = pod.Spec.Hostname
	}
	if sb.HostNetwork {
		hostname, _ = os.Hostname()
	}
	opts := []oci.SpecOpts{
		oci.WithProcessArgs(args...),
		oci.WithEnv(env),
		oci.WithHostname(hostname),
		container.NetworkNamespace(sb.Netns),
		oci.WithCgroup(filepath.Join("/", k.cfg.CgroupParent, "pod"+string(pod.UID), id)),
		oci.WithAnnotations(map[string]string{"io.kubernetes.pod.name": pod.Name, "io.kubernetes.pod.namespace": pod.Namespace}),
	}
	if c.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(c.WorkingDir))
	}
	if c.TTY {
		opts = append(opts, oci.WithTTY)
	}

	mounts, err := k.containerMounts(pod, c, sb, vols, hostname)
	if err != nil {
		return nil, err
	}
	opts = append(opts, oci.WithMounts(mounts))
	opts = append(opts, resourceOpts(c.Resources)...)
	sec, err := securityOpts(pod.Spec.SecurityContext, c.SecurityContext)
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", c.Name, err)
	}
	return append(opts, sec...), nil
}

func expandAll(in []string, mapping func(string) string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = expansion.Expand(s, mapping)
	}
	return out
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// containerEnv resolves env and envFrom, in upstream's order, expanding
// $(VAR) references to earlier variables.
func (k *Kubelet) containerEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container, sb *sandbox) ([]string, error) {
	vals := map[string]string{}
	var order []string
	set := func(name, val string) {
		if _, ok := vals[name]; !ok {
			order = append(order, name)
		}
		vals[name] = val
	}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := k.cfg.Client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configmap %q: %w", from.ConfigMapRef.Name, err)
			}
			for key, v := range cm.Data {
				set(from.Prefix+key, v)
			}
		case from.SecretRef != nil:
			s, err := k.cfg.Client.CoreV1().Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && from.SecretRef.Optional != nil && *from.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %q: %w", from.SecretRef.Name, err)
			}
			for key, v := range s.Data {
				set(from.Prefix+key, string(v))
			}
		}
	}
	mapping := expansion.MappingFuncFor(vals)
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expansion.Expand(e.Value, mapping))
			continue
		}
		v, skip, err := k.envValueFrom(ctx, pod, c, e.ValueFrom, sb)
		if err != nil {
			return nil, fmt.Errorf("env %q: %w", e.Name, err)
		}
		if !skip {
			set(e.Name, v)
		}
	}
	out := make([]string, 0, len(order))
	for _, name := range order {
		out = append(out, name+"="+vals[name])
	}
	return out, nil
}

func (k *Kubelet) envValueFrom(ctx context.Context, pod *corev1.Pod, c *corev1.Container, from *corev1.EnvVarSource, sb *sandbox) (string, bool, error) {
	switch {
	case from.FieldRef != nil:
		v, err := podField(pod, from.FieldRef.FieldPath, sb, k.cfg.NodeIPs)
		return v, false, err
	case from.ResourceFieldRef != nil:
		return resourceField(c, from.ResourceFieldRef)
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		optional := ref.Optional != nil && *ref.Optional
		cm, err := k.cfg.Client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("configmap %q: %w", ref.Name, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			if optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("key %q not found in configmap %q", ref.Key, ref.Name)
		}
		return v, false, nil
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		optional := ref.Optional != nil && *ref.Optional
		s, err := k.cfg.Client.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %q: %w", ref.Name, err)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			if optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("key %q not found in secret %q", ref.Key, ref.Name)
		}
		return string(v), false, nil
	}
	return "", false, fmt.Errorf("valueFrom has no source")
}

// podField resolves a downward-API field path.
func podField(pod *corev1.Pod, path string, sb *sandbox, nodeIPs []net.IP) (string, error) {
	if strings.HasPrefix(path, "metadata.labels['") && strings.HasSuffix(path, "']") {
		return pod.Labels[strings.TrimSuffix(strings.TrimPrefix(path, "metadata.labels['"), "']")], nil
	}
	if strings.HasPrefix(path, "metadata.annotations['") && strings.HasSuffix(path, "']") {
		return pod.Annotations[strings.TrimSuffix(strings.TrimPrefix(path, "metadata.annotations['"), "']")], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		if len(sb.IPs) > 0 {
			return sb.IPs[0], nil
		}
		return "", nil
	case "status.podIPs":
		return strings.Join(sb.IPs, ","), nil
	case "status.hostIP", "status.hostIPs":
		var ips []string
		for _, ip := range nodeIPs {
			ips = append(ips, ip.String())
		}
		if path == "status.hostIP" && len(ips) > 0 {
			return ips[0], nil
		}
		return strings.Join(ips, ","), nil
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

func resourceField(c *corev1.Container, ref *corev1.ResourceFieldSelector) (string, bool, error) {
	var q = c.Resources.Limits
	name := ref.Resource
	if strings.HasPrefix(name, "requests.") {
		q = c.Resources.Requests
	}
	name = name[strings.Index(name, ".")+1:]
	v, ok := q[corev1.ResourceName(name)]
	if !ok {
		return "0", false, nil
	}
	div := ref.Divisor
	if div.IsZero() {
		if name == "cpu" {
			return strconv.FormatInt((v.MilliValue()+999)/1000, 10), false, nil
		}
		return strconv.FormatInt(v.Value(), 10), false, nil
	}
	if name == "cpu" {
		return strconv.FormatInt((v.MilliValue()+div.MilliValue()-1)/div.MilliValue(), 10), false, nil
	}
	return strconv.FormatInt((v.Value()+div.Value()-1)/div.Value(), 10), false, nil
}

// containerMounts binds the container's volumeMounts plus the pod's
// /etc/hosts.
func (k *Kubelet) containerMounts(pod *corev1.Pod, c *corev1.Container, sb *sandbox, vols map[string]string, hostname string) ([]specs.Mount, error) {
	var mounts []specs.Mount
	for _, vm := range c.VolumeMounts {
		src, ok := vols[vm.Name]
		if !ok {
			return nil, fmt.Errorf("container %q: volumeMount %q names no volume of the pod", c.Name, vm.Name)
		}
		if vm.SubPath != "" {
			if strings.Contains(vm.SubPath, "..") || filepath.IsAbs(vm.SubPath) {
				return nil, fmt.Errorf("container %q: subPath %q must be relative without '..'", c.Name, vm.SubPath)
			}
			src = filepath.Join(src, vm.SubPath)
			if _, err := os.Stat(src); os.IsNotExist(err) {
				if err := os.MkdirAll(src, 0o777); err != nil {
					return nil, err
				}
			}
		}
		opts := []string{"rbind", "rprivate", "rw"}
		if vm.ReadOnly {
			opts[2] = "ro"
		}
		mounts = append(mounts, specs.Mount{Destination: vm.MountPath, Type: "bind", Source: src, Options: opts})
	}
	if !sb.HostNetwork {
		hosts := filepath.Join(k.podDir(pod.UID), "etc-hosts")
		var b strings.Builder
		b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
		for _, ip := range sb.IPs {
			fmt.Fprintf(&b, "%s\t%s\n", ip, hostname)
		}
		if err := atomicfile.Write(hosts, []byte(b.String()), 0o644); err != nil {
			return nil, err
		}
		mounts = append(mounts, specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: hosts, Options: []string{"rbind", "rprivate", "rw"}})
	}
	return mounts, nil
}

// resourceOpts maps requests and limits to cgroup settings as upstream's
// kubelet does: cpu requests to shares, cpu limits to a CFS quota, memory
// limits to the memory limit.
func resourceOpts(r corev1.ResourceRequirements) []oci.SpecOpts {
	var opts []oci.SpecOpts
	if cpu, ok := r.Requests[corev1.ResourceCPU]; ok {
		shares := uint64(cpu.MilliValue() * 1024 / 1000)
		if shares < 2 {
			shares = 2
		}
		opts = append(opts, oci.WithCPUShares(shares))
	}
	if cpu, ok := r.Limits[corev1.ResourceCPU]; ok {
		const period = 100000
		quota := cpu.MilliValue() * period / 1000
		if quota < 1000 {
			quota = 1000
		}
		opts = append(opts, oci.WithCPUCFS(quota, period))
	}
	if mem, ok := r.Limits[corev1.ResourceMemory]; ok {
		opts = append(opts, oci.WithMemoryLimit(uint64(mem.Value())))
	}
	return opts
}

// securityOpts applies runAsUser/runAsGroup, capabilities, privileged and
// readOnlyRootFilesystem; container settings override the pod's.
func securityOpts(psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) ([]oci.SpecOpts, error) {
	var uid, gid *int64
	if psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
	}
	var opts []oci.SpecOpts
	if sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
		if sc.Privileged != nil && *sc.Privileged {
			opts = append(opts, oci.WithPrivileged, oci.WithAllDevicesAllowed, oci.WithHostDevices, oci.WithWriteableSysfs, oci.WithWriteableCgroupfs)
		}
		if sc.Capabilities != nil {
			if len(sc.Capabilities.Add) > 0 {
				opts = append(opts, oci.WithAddedCapabilities(capNames(sc.Capabilities.Add)))
			}
			if len(sc.Capabilities.Drop) > 0 {
				opts = append(opts, oci.WithDroppedCapabilities(capNames(sc.Capabilities.Drop)))
			}
		}
		if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
			opts = append(opts, oci.WithRootFSReadonly())
		}
	}
	for _, v := range []*int64{uid, gid} {
		if v != nil && (*v < 0 || *v > 1<<31) {
			return nil, fmt.Errorf("securityContext: id %d out of range", *v)
		}
	}
	switch {
	case uid != nil && gid != nil:
		opts = append(opts, oci.WithUIDGID(uint32(*uid), uint32(*gid)))
	case uid != nil:
		opts = append(opts, oci.WithUserID(uint32(*uid)))
	case gid != nil:
		opts = append(opts, oci.WithUIDGID(0, uint32(*gid)))
	}
	return opts, nil
}

func capNames(caps []corev1.Capability) []string {
	out := make([]string, 0, len(caps))
	for _, c := range caps {
		n := strings.ToUpper(string(c))
		if n == "ALL" {
			out = append(out, "ALL")
			continue
		}
		if !strings.HasPrefix(n, "CAP_") {
			n = "CAP_" + n
		}
		out = append(out, n)
	}
	return out
}
