package kubelet

import (
	"fmt"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// configuration is the node's KubeletConfiguration.
func (c *Config) configuration() *kubeletv1beta1.KubeletConfiguration {
	kc := &kubeletv1beta1.KubeletConfiguration{
		TypeMeta:           metav1.TypeMeta{APIVersion: kubeletv1beta1.SchemeGroupVersion.String(), Kind: "KubeletConfiguration"},
		Address:            c.NodeIPs[0].String(),
		Port:               int32(c.Port),
		ReadOnlyPort:       0,
		HealthzBindAddress: "127.0.0.1",
		Authentication: kubeletv1beta1.KubeletAuthentication{
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: c.ClientCAFile},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(true)},
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
		},
		Authorization:            kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		ContainerRuntimeEndpoint: c.RuntimeEndpoint,
		CgroupDriver:             "cgroupfs",
		CgroupRoot:               c.CgroupRoot,
		CgroupsPerQOS:            ptr.To(true),
		// Hybrid hosts (v1 controllers, v2 beside them) still run kubelets.
		FailCgroupV1: ptr.To(false),
		// The kubelet then sets vm.overcommit_memory, kernel.panic and
		// friends host-wide, as on any node; `capstan down` puts them back.
		ProtectKernelDefaults: false,
		// Serving certificates come from CSRs (the server approves a node's
		// own), so the API server can verify kubelets.
		ServerTLSBootstrap: true,
		RotateCertificates: true,
		PodLogsDir:         c.PodLogsDir,
		ClusterDNS:         c.ClusterDNS,
		ClusterDomain:      c.ClusterDomain,
		// No registry: an image the kubelet removed could not come back.
		ImageGCHighThresholdPercent: ptr.To[int32](100),
		// Nodes of one machine share its disk; kind's choice: no disk eviction.
		EvictionHard: map[string]string{"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
		FailSwapOn:   ptr.To(false),
	}
	if c.ResolvConf != "" {
		kc.ResolverConfig = ptr.To(c.ResolvConf)
	}
	return kc
}

// WriteConfig writes the KubeletConfiguration file.
func (c *Config) WriteConfig() error {
	if len(c.NodeIPs) == 0 {
		return fmt.Errorf("kubelet config: no node IP")
	}
	data, err := yaml.Marshal(c.configuration())
	if err != nil {
		return fmt.Errorf("kubelet config: %w", err)
	}
	if err := os.MkdirAll(c.Dir, 0o750); err != nil {
		return err
	}
	return atomicfile.Write(c.ConfigFile(), data, 0o644)
}
