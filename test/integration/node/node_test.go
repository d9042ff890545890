package node_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/capstan-net/capstan/cni"
)

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// TestNode runs one node through a pod's whole life, in order: start with
// an IP from the node's podCIDR, env and volumes, readiness, logs and exec
// through kubectl, crash-loop back-off, an agent restart, and deletion.
func TestNode(t *testing.T) {
	n := startNode(t)
	ctx := context.Background()
	pods := n.cs.CoreV1().Pods("default")

	_, err := n.cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cfg"}, Data: map[string]string{"greeting": "hello-from-configmap"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.cs.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "sec"}, Data: map[string][]byte{"password": []byte("s3cret")}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{
				Name: "init", Image: "capstan.local/busybox:1.0",
				Command:      []string{"sh", "-c", "echo initialized > /work/init.txt"},
				VolumeMounts: []corev1.VolumeMount{{Name: "work", MountPath: "/work"}},
			}},
			Containers: []corev1.Container{{
				Name: "echo", Image: "capstan.local/echo:1.0", Args: []string{"serve"},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					corev1.ResourceMemory: resource.MustParse("64Mi"), corev1.ResourceCPU: resource.MustParse("500m")}},
				Env: []corev1.EnvVar{
					{Name: "MY_POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "MY_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
					{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "greeting"}}},
					{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "password"}}},
					{Name: "COMBINED", Value: "$(MY_POD)-x"},
				},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "work", MountPath: "/work"},
					{Name: "cfg", MountPath: "/etc/cfg", ReadOnly: true},
					{Name: "sec", MountPath: "/etc/sec", ReadOnly: true},
				},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}},
					PeriodSeconds: 1, FailureThreshold: 1,
				},
				LivenessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 2,
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
				{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec"}}},
			},
			TerminationGracePeriodSeconds: ptr.To(int64(5)),
		},
	}
	if _, err := pods.Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	n.eventually(90*time.Second, "web Running and Ready", func() (bool, string) {
		p, err := pods.Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning && podReady(p), string(p.Status.Phase) + " " + statusSummary(p)
	})
	node, err := n.cs.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cidr := netip.MustParsePrefix(node.Spec.PodCIDR)
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil || !cidr.Contains(ip) {
		t.Fatalf("pod IP %q is not in the node's podCIDR %s", pod.Status.PodIP, cidr)
	}
	if pod.Status.HostIP != n.nodeIP {
		t.Errorf("hostIP = %q, want %q", pod.Status.HostIP, n.nodeIP)
	}
	cst := pod.Status.ContainerStatuses[0]
	if !strings.HasPrefix(cst.ContainerID, "containerd://") || cst.ImageID == "" || cst.RestartCount != 0 {
		t.Errorf("container status: %+v", cst)
	}
	if got := pod.Status.InitContainerStatuses; len(got) != 1 || got[0].State.Terminated == nil || got[0].State.Terminated.ExitCode != 0 {
		t.Errorf("init container status: %+v", got)
	}
	startedID := cst.ContainerID
	podIP := pod.Status.PodIP

	t.Run("resources become cgroup limits", func(t *testing.T) {
		id := strings.TrimPrefix(startedID, "containerd://")
		dir := filepath.Join("capstan", n.name, "pod"+string(pod.UID), id)
		for file, want := range map[string]string{
			"/sys/fs/cgroup/memory/" + dir + "/memory.limit_in_bytes": "67108864",
			"/sys/fs/cgroup/cpu/" + dir + "/cpu.cfs_quota_us":         "50000",
		} {
			got, err := os.ReadFile(file)
			if err != nil {
				// cgroup v2: memory.max and cpu.max instead.
				if v2, err2 := os.ReadFile("/sys/fs/cgroup/" + dir + "/memory.max"); err2 == nil && strings.Contains(file, "memory") {
					got, err = v2, nil
				}
			}
			if err != nil || strings.TrimSpace(string(got)) != want {
				t.Errorf("%s = %q, %v; want %s", file, got, err, want)
			}
		}
	})

	t.Run("served on the pod IP inside the node", func(t *testing.T) {
		body, err := n.httpGet(net.JoinHostPort(podIP, "8080"), "/hostname")
		if err != nil || strings.TrimSpace(body) != "web" {
			t.Fatalf("GET /hostname = %q, %v", body, err)
		}
	})

	t.Run("exec through kubectl", func(t *testing.T) {
		out, err := n.kubectl("exec", "web", "-c", "echo", "--", "sh", "-c",
			"echo $MY_POD $MY_IP $GREETING $PASSWORD $COMBINED; cat /etc/cfg/greeting /etc/sec/password /work/init.txt")
		if err != nil {
			t.Fatalf("kubectl exec: %v\n%s", err, out)
		}
		want := "web " + podIP + " hello-from-configmap s3cret web-x\nhello-from-configmaps3cretinitialized"
		if strings.TrimSpace(out) != want {
			t.Fatalf("exec output %q, want %q", out, want)
		}
		// stdin reaches the command (kubectl exec -i).
		ictx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ictx, capstanBin, "kubectl", "exec", "-i", "web", "-c", "echo", "--", "sh", "-c", "tr a-z A-Z")
		cmd.Env = append(os.Environ(), "KUBECONFIG="+n.srv.Kubeconfig)
		cmd.Stdin = strings.NewReader("piped through stdin\n")
		piped, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(piped)) != "PIPED THROUGH STDIN" {
			t.Fatalf("exec -i: %v %q", err, piped)
		}
		out, err = n.kubectl("exec", "web", "--", "sh", "-c", "exit 7")
		if err == nil || !strings.Contains(out, "exit code 7") {
			t.Fatalf("exec exit 7: err=%v out=%q", err, out)
		}
	})

	t.Run("a ClusterIP Service reaches the pod through the agent's dataplane", func(t *testing.T) {
		svc, err := n.cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out string
		n.eventually(30*time.Second, "an HTTP request through the ClusterIP", func() (bool, string) {
			out, err = n.kubectl("exec", "web", "-c", "echo", "--", "/capstan-echo", "connect", "--protocol", "http", svc.Spec.ClusterIP+":80")
			return err == nil && strings.TrimSpace(out) == "web", fmt.Sprintf("%v %q", err, out)
		})
	})

	t.Run("logs through kubectl", func(t *testing.T) {
		out, err := n.kubectl("logs", "web", "-c", "echo")
		if err != nil || !strings.Contains(out, "serving as web") {
			t.Fatalf("kubectl logs: %v\n%s", err, out)
		}
		out, err = n.kubectl("logs", "web", "-c", "echo", "--timestamps", "--tail=1")
		if err != nil || len(strings.Split(strings.TrimSpace(out), "\n")) != 1 || !strings.Contains(out, "Z ") {
			t.Fatalf("kubectl logs --timestamps --tail=1: %v\n%q", err, out)
		}
	})

	t.Run("port-forward through kubectl", func(t *testing.T) {
		cmd := exec.Command(capstanBin, "kubectl", "port-forward", "pod/web", ":8080")
		cmd.Env = append(os.Environ(), "KUBECONFIG="+n.srv.Kubeconfig)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		// "Forwarding from 127.0.0.1:NNNNN -> 8080"
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			t.Fatalf("port-forward said %q: %v", line, err)
		}
		addr := ""
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "Forwarding" {
			addr = f[2]
		}
		if addr == "" {
			t.Fatalf("port-forward said %q", line)
		}
		resp, err := http.Get("http://" + addr + "/hostname")
		if err != nil {
			t.Fatalf("GET through port-forward: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(body)) != "web" {
			t.Fatalf("GET /hostname through port-forward = %q", body)
		}
	})

	t.Run("readiness probe flips Ready", func(t *testing.T) {
		if out, err := n.kubectl("exec", "web", "--", "touch", "/tmp/not-ready"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		n.eventually(20*time.Second, "web not Ready", func() (bool, string) {
			p, err := pods.Get(ctx, "web", metav1.GetOptions{})
			return err == nil && !podReady(p), statusSummary(p)
		})
		if out, err := n.kubectl("exec", "web", "--", "rm", "/tmp/not-ready"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		n.eventually(20*time.Second, "web Ready again", func() (bool, string) {
			p, err := pods.Get(ctx, "web", metav1.GetOptions{})
			return err == nil && podReady(p), statusSummary(p)
		})
	})

	t.Run("crashing container backs off", func(t *testing.T) {
		crash := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "crash"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "c", Image: "capstan.local/busybox:1.0",
				Command: []string{"sh", "-c", "echo crashing; exit 3"},
			}}, TerminationGracePeriodSeconds: ptr.To(int64(1))},
		}
		if _, err := pods.Create(ctx, crash, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		sawBackOff := false
		restartsAt := map[int32]time.Time{}
		n.eventually(60*time.Second, "restartCount >= 3 with CrashLoopBackOff", func() (bool, string) {
			p, err := pods.Get(ctx, "crash", metav1.GetOptions{})
			if err != nil || len(p.Status.ContainerStatuses) == 0 {
				return false, "no status"
			}
			cs := p.Status.ContainerStatuses[0]
			if _, ok := restartsAt[cs.RestartCount]; !ok {
				restartsAt[cs.RestartCount] = time.Now()
			}
			if cs.State.Waiting != nil && cs.State.Waiting.Reason == "CrashLoopBackOff" {
				sawBackOff = true
				if cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 3 {
					t.Errorf("lastState = %+v, want exit code 3", cs.LastTerminationState)
				}
			}
			return cs.RestartCount >= 3 && sawBackOff, statusSummary(p)
		})
		// Back-off doubles (1s, 2s, 4s): the third restart comes later
		// after the second than the second after the first.
		if d1, d2 := restartsAt[2].Sub(restartsAt[1]), restartsAt[3].Sub(restartsAt[2]); d2 <= d1 {
			t.Errorf("restart intervals %v then %v: back-off did not grow", d1, d2)
		}
		out, err := n.kubectl("logs", "crash", "--previous")
		if err != nil || !strings.Contains(out, "crashing") {
			t.Fatalf("logs --previous: %v %q", err, out)
		}
	})

	t.Run("a container over its memory limit is OOMKilled", func(t *testing.T) {
		oom := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "oom"},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{
				Name: "c", Image: "capstan.local/busybox:1.0",
				// tail keeps its whole input when there is no newline.
				Command:   []string{"sh", "-c", "head -c 200m /dev/zero | tail"},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("24Mi")}},
			}}},
		}
		if _, err := pods.Create(ctx, oom, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		n.eventually(60*time.Second, "oom Failed with OOMKilled", func() (bool, string) {
			p, err := pods.Get(ctx, "oom", metav1.GetOptions{})
			if err != nil || len(p.Status.ContainerStatuses) == 0 {
				return false, "no status"
			}
			st := p.Status.ContainerStatuses[0].State.Terminated
			return p.Status.Phase == corev1.PodFailed && st != nil && st.Reason == "OOMKilled", statusSummary(p)
		})
	})

	t.Run("logs -f follows until the container exits", func(t *testing.T) {
		ticker := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "ticker"},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{
				Name: "c", Image: "capstan.local/busybox:1.0",
				Command: []string{"sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done"},
			}}},
		}
		if _, err := pods.Create(ctx, ticker, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		n.eventually(30*time.Second, "ticker Running", func() (bool, string) {
			p, err := pods.Get(ctx, "ticker", metav1.GetOptions{})
			return err == nil && p.Status.Phase == corev1.PodRunning, statusSummary(p)
		})
		start := time.Now()
		out, err := n.kubectl("logs", "-f", "ticker")
		if err != nil || !strings.Contains(out, "tick 1\ntick 2\ntick 3") {
			t.Fatalf("logs -f: %v %q", err, out)
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("logs -f took %v to end after the container exited", time.Since(start))
		}
		n.eventually(30*time.Second, "ticker Succeeded", func() (bool, string) {
			p, err := pods.Get(ctx, "ticker", metav1.GetOptions{})
			return err == nil && p.Status.Phase == corev1.PodSucceeded, statusSummary(p)
		})
	})

	t.Run("agent restart adopts running pods", func(t *testing.T) {
		p, _ := pods.Get(ctx, "web", metav1.GetOptions{})
		startedAt := p.Status.ContainerStatuses[0].State.Running.StartedAt
		n.stopAgent(true)
		n.startAgent(false)
		time.Sleep(5 * time.Second)
		n.eventually(30*time.Second, "web Ready after agent restart", func() (bool, string) {
			p, err := pods.Get(ctx, "web", metav1.GetOptions{})
			return err == nil && podReady(p), statusSummary(p)
		})
		p, _ = pods.Get(ctx, "web", metav1.GetOptions{})
		cs := p.Status.ContainerStatuses[0]
		if cs.ContainerID != startedID || cs.RestartCount != 0 || cs.State.Running == nil || !cs.State.Running.StartedAt.Equal(&startedAt) {
			t.Fatalf("web was restarted by the agent restart: %+v", cs)
		}
		if body, err := n.httpGet(net.JoinHostPort(podIP, "8080"), "/hostname"); err != nil || strings.TrimSpace(body) != "web" {
			t.Fatalf("after restart GET /hostname = %q, %v", body, err)
		}
	})

	t.Run("pods deleted while the agent is down are cleaned up", func(t *testing.T) {
		p, err := pods.Get(ctx, "crash", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		uid := string(p.UID)
		n.stopAgent(false)
		zero := int64(0)
		if err := pods.Delete(ctx, "crash", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		n.startAgent(false)
		n.eventually(30*time.Second, "crash's containers and netns removed", func() (bool, string) {
			ids := n.podContainers(uid)
			_, err := os.Stat(filepath.Join(n.dir, "run", n.name, "netns", uid))
			return len(ids) == 0 && os.IsNotExist(err), fmt.Sprintf("containers %v, netns stat err %v", ids, err)
		})
	})

	t.Run("delete removes containers, netns, veth and IP", func(t *testing.T) {
		p, _ := pods.Get(ctx, "web", metav1.GetOptions{})
		uid := string(p.UID)
		if len(n.podContainers(uid)) == 0 {
			t.Fatal("no containers found for web before delete")
		}
		if !slices.Contains(n.links(), cni.HostIfName(uid, "eth0")) {
			t.Fatalf("web's host veth %s missing before delete: %v", cni.HostIfName(uid, "eth0"), n.links())
		}
		if err := pods.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		n.eventually(30*time.Second, "web gone from the API", func() (bool, string) {
			_, err := pods.Get(ctx, "web", metav1.GetOptions{})
			return apierrors.IsNotFound(err), "still there"
		})
		if ids := n.podContainers(uid); len(ids) != 0 {
			t.Errorf("containers left: %v", ids)
		}
		netnsPin := filepath.Join(n.dir, "run", n.name, "netns", uid)
		if _, err := os.Stat(netnsPin); !os.IsNotExist(err) {
			t.Errorf("netns pin %s left: %v", netnsPin, err)
		}
		veth := cni.HostIfName(uid, "eth0")
		for _, l := range n.links() {
			if l == veth {
				t.Errorf("host veth %s left in the node's netns", veth)
			}
		}
		ipamFiles, _ := filepath.Glob(filepath.Join(n.dir, "data", "nodes", n.name, "ipam", "*"))
		for _, f := range ipamFiles {
			b, _ := os.ReadFile(f)
			if strings.Contains(string(b), uid) {
				t.Errorf("IPAM still holds web's IP in %s", f)
			}
		}
		body, err := n.httpGet(net.JoinHostPort(podIP, "8080"), "/hostname")
		if err == nil && body != "" {
			t.Errorf("web's IP still answers after delete: %q", body)
		}
	})
}

func statusSummary(p *corev1.Pod) string {
	if p == nil {
		return "<nil>"
	}
	var b strings.Builder
	b.WriteString(string(p.Status.Phase))
	for _, c := range p.Status.Conditions {
		b.WriteString(" " + string(c.Type) + "=" + string(c.Status))
	}
	for _, c := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		b.WriteString(" [" + c.Name)
		switch {
		case c.State.Running != nil:
			b.WriteString(" running")
		case c.State.Waiting != nil:
			b.WriteString(" waiting " + c.State.Waiting.Reason + ": " + c.State.Waiting.Message)
		case c.State.Terminated != nil:
			b.WriteString(" terminated " + c.State.Terminated.Reason)
		}
		b.WriteString(" restarts=" + strconv.Itoa(int(c.RestartCount)) + "]")
	}
	return b.String()
}
