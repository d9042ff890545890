package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/internal/atomicfile"
	"github.com/capstan-net/capstan/kubelet/netns"
)

// sandbox is a pod's network: its pinned namespace and the IPs CNI gave it.
// The record on disk lets a restarted agent adopt the pod without a second
// CNI ADD.
type sandbox struct {
	Netns       string   `json:"netns"`
	IPs         []string `json:"ips"`
	HostNetwork bool     `json:"hostNetwork,omitempty"`
}

func (s *sandbox) podIPs() []net.IP {
	var out []net.IP
	for _, ip := range s.IPs {
		if p := net.ParseIP(ip); p != nil {
			out = append(out, p)
		}
	}
	return out
}

func (k *Kubelet) sandboxFile(uid types.UID) string {
	return filepath.Join(k.podDir(uid), "sandbox.json")
}

func (k *Kubelet) loadSandbox(uid types.UID) *sandbox {
	data, err := os.ReadFile(k.sandboxFile(uid))
	if err != nil {
		return nil
	}
	var s sandbox
	if json.Unmarshal(data, &s) != nil {
		return nil
	}
	if !s.HostNetwork && !netns.Exists(s.Netns) {
		return nil
	}
	return &s
}

// ensureSandbox returns the pod's sandbox, creating its network namespace
// and running CNI ADD the first time.
func (k *Kubelet) ensureSandbox(ctx context.Context, pod *corev1.Pod) (*sandbox, error) {
	if s := k.loadSandbox(pod.UID); s != nil {
		return s, nil
	}
	if err := os.MkdirAll(k.podDir(pod.UID), 0o750); err != nil {
		return nil, err
	}
	var s sandbox
	if pod.Spec.HostNetwork {
		s = sandbox{Netns: fmt.Sprintf("/proc/%d/ns/net", os.Getpid()), HostNetwork: true}
		for _, ip := range k.cfg.NodeIPs {
			s.IPs = append(s.IPs, ip.String())
		}
	} else {
		if k.cfg.Network == nil {
			return nil, ErrNoNetworkConfig
		}
		if err := k.cfg.Network.Ready(); err != nil {
			return nil, err
		}
		path := k.netnsPath(pod.UID)
		if netns.Exists(path) {
			// A half-made sandbox from an earlier try: start clean.
			k.cfg.Network.Del(ctx, string(pod.UID), path)
			netns.Remove(path)
		} else {
			os.Remove(path)
		}
		if err := netns.Create(path); err != nil {
			return nil, err
		}
		ips, err := k.cfg.Network.Add(ctx, pod, path)
		if err != nil {
			k.cfg.Network.Del(context.WithoutCancel(ctx), string(pod.UID), path)
			netns.Remove(path)
			return nil, err
		}
		s = sandbox{Netns: path}
		for _, ip := range ips {
			s.IPs = append(s.IPs, ip.String())
		}
	}
	data, _ := json.Marshal(s)
	if err := atomicfile.Write(k.sandboxFile(pod.UID), data, 0o640); err != nil {
		return nil, fmt.Errorf("sandbox record: %w", err)
	}
	return &s, nil
}

// teardownSandbox runs CNI DEL and removes the namespace; safe to repeat.
func (k *Kubelet) teardownSandbox(ctx context.Context, uid types.UID) error {
	path := k.netnsPath(uid)
	var errs []error
	if k.cfg.Network != nil {
		ns := path
		if !netns.Exists(path) {
			ns = ""
		}
		if err := k.cfg.Network.Del(ctx, string(uid), ns); err != nil && !errors.Is(err, ErrNoNetworkConfig) {
			errs = append(errs, err)
		}
	}
	if err := netns.Remove(path); err != nil {
		errs = append(errs, err)
	}
	os.Remove(k.sandboxFile(uid))
	return errors.Join(errs...)
}
