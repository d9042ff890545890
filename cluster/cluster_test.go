package cluster_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/images/imagebuild"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

// TestUpDownLeavesNothing brings a two-node cluster up, runs a pod on
// each node, brings it up again (a resume: nothing restarts), then down,
// and checks that nothing it made is left on the machine.
func TestUpDownLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces, cgroups, BPF)")
	}
	root, err := testbin.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	capstan := os.Getenv("CAPSTAN_BINARY")
	if capstan == "" {
		if capstan, err = testbin.Build(root, bin); err != nil {
			t.Fatal(err)
		}
	}
	images := filepath.Join(bin, "images.tar")
	wd, _ := os.Getwd()
	os.Chdir(root)
	err = imagebuild.WriteFile(context.Background(), imagebuild.Options{}, images)
	os.Chdir(wd)
	if err != nil {
		t.Fatal(err)
	}

	bpffsBefore := mountedAt("/sys/fs/bpf")
	var absent []string
	for _, d := range []string{"/var/lib/kubelet", "/var/lib/cni", "/run/capstan", "/run/containerd", "/var/log/containers", "/run/capstan-host.json"} {
		if _, err := os.Stat(d); err != nil {
			absent = append(absent, d)
		}
	}
	sysctlsBefore := sysctls()
	name := fmt.Sprintf("cst%04x", rand.IntN(1<<16))
	dir := t.TempDir()
	cfg := cluster.Config{
		Name: name, DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run"), Nodes: 2,
		Subnet: netip.MustParsePrefix(fmt.Sprintf("172.30.%d.0/24", 100+rand.IntN(150))),
		Port:   20000 + rand.IntN(10000),
		Binary: capstan,
		Images: []string{images},
	}
	ctx := context.Background()
	downDone := false
	t.Cleanup(func() {
		if !downDone {
			cluster.Down(ctx, cfg)
		}
	})
	st, err := cluster.Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cluster.Kubeconfig(cfg.DataDir))
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(rc)
	for _, node := range st.Nodes {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p-" + node}, Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:1.0", Args: []string{"pause"}}},
		}}
		if err := retry(60*time.Second, func() error {
			_, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
			return err
		}); err != nil {
			t.Fatalf("create pod: %v", err)
		}
	}
	running := func() error {
		for _, node := range st.Nodes {
			p, err := cs.CoreV1().Pods("default").Get(ctx, "p-"+node, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if p.Status.Phase != corev1.PodRunning {
				return fmt.Errorf("%s is %s", p.Name, p.Status.Phase)
			}
		}
		return nil
	}
	if err := retry(120*time.Second, running); err != nil {
		logs, _ := os.ReadFile(filepath.Join(cfg.DataDir, "cluster", "logs", st.Nodes[0]+".log"))
		t.Fatalf("pods not running: %v\n%s", err, tail(string(logs), 3000))
	}

	// Up again on a running cluster resumes it: the same processes.
	pids := pidFiles(t, cfg.DataDir)
	if _, err := cluster.Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if again := pidFiles(t, cfg.DataDir); fmt.Sprint(again) != fmt.Sprint(pids) {
		t.Fatalf("up on a running cluster restarted processes: %v then %v", pids, again)
	}

	downDone = true
	if err := cluster.Down(ctx, cfg); err != nil {
		t.Fatalf("down: %v", err)
	}
	var left []string
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), name) {
		left = append(left, "netns: "+string(out))
	}
	out, _ = exec.Command("ip", "-o", "link").Output()
	if strings.Contains(string(out), name) {
		left = append(left, "links with "+name)
	}
	out, _ = exec.Command("ps", "-eo", "args").Output()
	if strings.Contains(string(out), cfg.DataDir) {
		left = append(left, "processes using "+cfg.DataDir)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), dir) {
		left = append(left, "mounts under "+dir)
	}
	for _, node := range st.Nodes {
		for _, p := range []string{
			filepath.Join("/sys/fs/bpf/capstan", node),
			filepath.Join(cfg.DataDir, "nodes", node),
			filepath.Join(cfg.RunDir, node),
		} {
			if _, err := os.Stat(p); err == nil {
				left = append(left, p)
			}
		}
		if cg, _ := filepath.Glob("/sys/fs/cgroup/*/capstan/" + node); len(cg) > 0 {
			left = append(left, fmt.Sprint(cg))
		}
	}
	out, _ = exec.Command("ps", "-eo", "stat=,args=").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && !strings.HasPrefix(f[0], "Z") &&
			(strings.Contains(line, "containerd-shim") || strings.Contains(line, "/pause") || strings.Contains(line, "capstan-echo")) {
			left = append(left, "process: "+line)
		}
	}
	for _, d := range absent {
		if _, err := os.Stat(d); err == nil {
			left = append(left, d)
		}
	}
	if sysctls() != sysctlsBefore {
		left = append(left, "host sysctls the kubelets changed: "+sysctls()+", were "+sysctlsBefore)
	}
	if mountedAt("/sys/fs/bpf") != bpffsBefore {
		left = append(left, "the bpffs mount up made on /sys/fs/bpf")
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "cluster")); err == nil {
		left = append(left, "cluster state dir")
	}
	if len(left) > 0 {
		t.Fatalf("capstan down left: %v", left)
	}
}

// sysctls are the host-wide settings kubelets change.
func sysctls() string {
	var b strings.Builder
	for _, k := range []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "vm/panic_on_oom"} {
		v, _ := os.ReadFile("/proc/sys/" + k)
		fmt.Fprintf(&b, "%s=%s ", k, strings.TrimSpace(string(v)))
	}
	return b.String()
}

func mountedAt(dir string) bool {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func retry(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func pidFiles(t *testing.T, dataDir string) map[string]string {
	files, _ := filepath.Glob(filepath.Join(dataDir, "cluster", "*.pid"))
	out := map[string]string{}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		out[filepath.Base(f)] = string(b)
	}
	if len(out) == 0 {
		t.Fatal("no pid files")
	}
	return out
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
