package kubelet

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kubernetes/pkg/kubelet/apis/config/validation"
	"k8s.io/kubernetes/pkg/kubelet/kubeletconfig/configfiles"
	utilfs "k8s.io/kubernetes/pkg/util/filesystem"
)

func testConfig(t *testing.T) *Config {
	return &Config{
		NodeName: "node-1", NodeIPs: []net.IP{net.ParseIP("172.30.0.11")}, Dir: t.TempDir(),
		RuntimeEndpoint: "unix:///run/capstan/node-1/containerd/containerd.sock", CgroupRoot: "/capstan/node-1",
		ClientCAFile: "/var/lib/capstan/pki/ca.crt", PodLogsDir: "/var/lib/capstan/nodes/node-1/pod-logs", Port: 10250,
		ClusterDNS: []string{"10.96.0.10"}, ClusterDomain: "cluster.local",
	}
}

// The file must load and validate as the kubelet itself loads it.
func TestConfigLoadsInTheKubelet(t *testing.T) {
	c := testConfig(t)
	if err := c.WriteConfig(); err != nil {
		t.Fatal(err)
	}
	loader, err := configfiles.NewFsLoader(&utilfs.DefaultFs{}, c.ConfigFile())
	if err != nil {
		t.Fatal(err)
	}
	kc, err := loader.Load(context.Background())
	if err != nil {
		t.Fatalf("kubelet cannot load %s: %v", c.ConfigFile(), err)
	}
	if err := validation.ValidateKubeletConfiguration(kc, utilfeature.DefaultFeatureGate); err != nil {
		t.Fatalf("kubelet rejects the configuration: %v", err)
	}
	if kc.CgroupRoot != "/capstan/node-1" || kc.FailCgroupV1 || kc.ProtectKernelDefaults || !kc.ServerTLSBootstrap {
		t.Fatalf("loaded configuration: cgroupRoot %q failCgroupV1 %v protectKernelDefaults %v serverTLSBootstrap %v",
			kc.CgroupRoot, kc.FailCgroupV1, kc.ProtectKernelDefaults, kc.ServerTLSBootstrap)
	}
	if kc.ImageGCHighThresholdPercent != 100 || kc.Authentication.Anonymous.Enabled || kc.ReadOnlyPort != 0 {
		t.Fatalf("image GC %d, anonymous %v, read-only port %d", kc.ImageGCHighThresholdPercent, kc.Authentication.Anonymous.Enabled, kc.ReadOnlyPort)
	}
}

func TestArgs(t *testing.T) {
	c := testConfig(t)
	c.ExtraArgs = []string{"v=3", "--node-labels=zone=a"}
	args, err := c.Args()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--v=3", "--node-labels=zone=a", "--hostname-override=node-1", "--node-ip=172.30.0.11",
		"--bootstrap-kubeconfig=" + filepath.Join(c.Dir, "bootstrap.kubeconfig")} {
		if !slices.Contains(args, want) {
			t.Errorf("args %v lack %s", args, want)
		}
	}
	c.ExtraArgs = []string{"hostname-override=other"}
	if args, _ := c.Args(); !slices.Contains(args, "--hostname-override=other") || slices.Contains(args, "--hostname-override=node-1") {
		t.Errorf("an override did not replace the default: %v", args)
	}
	if _, err := ParseArgs([]string{"no-such=1"}); err == nil || !strings.Contains(err.Error(), "--no-such") {
		t.Fatalf("unknown kubelet flag: %v", err)
	}
}

func TestParseMounts(t *testing.T) {
	hybrid := `30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/cpuset rw,nosuid shared:11 - cgroup cgroup rw,cpuset
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory`
	m, err := parseMounts(strings.NewReader(hybrid))
	if err != nil || len(m) != 3 {
		t.Fatalf("mounts %+v, %v", m, err)
	}
	if !m[0].v2 || m[0].dir != "/sys/fs/cgroup/unified" || m[1].v2 || !strings.Contains(m[1].options, "cpuset") {
		t.Fatalf("mounts %+v", m)
	}
}

func TestInheritCpuset(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "cpuset.cpus"), []byte("0-1\n"), 0o644)
	os.WriteFile(filepath.Join(root, "cpuset.mems"), []byte("0\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "capstan", "node-1"), 0o755)
	if err := inheritCpuset(root, "/capstan/node-1"); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(root, "capstan", "node-1", "cpuset.cpus")); string(data) != "0-1\n" {
		t.Fatalf("cpuset.cpus %q", data)
	}
}
