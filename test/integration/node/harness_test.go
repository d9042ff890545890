// Package node_test runs a real node: a `capstan server` bound on a harness
// link, and `capstan agent` inside its own network namespace with the
// project's containerd, the capstan-cni plugin and the test images. All
// pod traffic stays in the node's namespace; the root namespace only has
// the harness link's /30.
package node_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/capstan-net/capstan/control/server/servertest"
	"github.com/capstan-net/capstan/test/images/imagebuild"
	"github.com/capstan-net/capstan/test/integration/testbin"
)

var (
	capstanBin, cniBin, imagesTar, repoRoot string
	containerdSocket                        = "/run/capstan/containerd/containerd.sock"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "node tests need root (network namespaces, containerd)")
		return 1
	}
	if s := os.Getenv("CAPSTAN_CONTAINERD_SOCKET"); s != "" {
		containerdSocket = s
	}
	if _, err := os.Stat(containerdSocket); err != nil {
		fmt.Fprintf(os.Stderr, "no containerd at %s: run scripts/containerd.sh start\n", containerdSocket)
		return 1
	}
	dir, err := os.MkdirTemp("", "capstan-node-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if repoRoot, err = testbin.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if capstanBin, err = testbin.Build(repoRoot, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cniBin = dir // make build puts capstan-cni beside capstan
	imagesTar = filepath.Join(dir, "images.tar")
	wd, _ := os.Getwd()
	os.Chdir(repoRoot)
	err = imagebuild.WriteFile(context.Background(), imagebuild.Options{}, imagesTar)
	os.Chdir(wd)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build test images:", err)
		return 1
	}
	return m.Run()
}

// node is one server plus one agent in its own network namespace.
type node struct {
	t        *testing.T
	srv      *servertest.Server
	cs       kubernetes.Interface
	name     string
	netns    string // path of the node's network namespace
	hostIf   string
	hostIP   string
	nodeIP   string
	dir      string
	agent    *exec.Cmd
	agentLog *os.File
	routing  string // native (default) or vxlan
	// agentThread keeps the thread that forked the agent alive.
	agentThread chan struct{}
}

func startNode(t *testing.T) *node {
	t.Helper()
	n := &node{t: t, name: fmt.Sprintf("node-%04x", rand.IntN(1<<16)), dir: t.TempDir(), routing: "native"}
	octet := 1 + rand.IntN(250)
	n.hostIP, n.nodeIP = fmt.Sprintf("172.31.%d.1", octet), fmt.Sprintf("172.31.%d.2", octet)
	n.hostIf = "cpt" + n.name[5:]
	n.makeNetns()
	n.mountBPFFS()
	n.srv = servertest.Start(t, servertest.Options{
		BindAddress: n.hostIP,
		Controllers: []string{"namespace", "scheduler", "nodeipam", "garbagecollector", "endpointslice"},
	})
	n.cs = kubernetes.NewForConfigOrDie(n.srv.Config)
	t.Cleanup(n.cleanup)
	n.startAgent(true)
	n.waitNodeReady()
	return n
}

// makeNetns creates the node's namespace and the /30 harness link to it.
func (n *node) makeNetns() {
	t := n.t
	nsName := "capstan-test-" + n.name
	if out, err := exec.Command("ip", "netns", "add", nsName).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	n.netns = "/run/netns/" + nsName
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsName).Run() })
	cmds := [][]string{
		{"ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", "eth0", "netns", nsName},
		{"ip", "addr", "add", n.hostIP + "/30", "dev", n.hostIf},
		{"ip", "link", "set", n.hostIf, "up"},
		{"ip", "-n", nsName, "addr", "add", n.nodeIP + "/30", "dev", "eth0"},
		{"ip", "-n", nsName, "link", "set", "eth0", "up"},
		{"ip", "-n", nsName, "link", "set", "lo", "up"},
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", n.hostIf).Run() })
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
	}
}

func (n *node) startAgent(first bool) {
	t := n.t
	args := []string{"--net=" + n.netns, capstanBin, "agent",
		"--server", fmt.Sprintf("https://%s", n.srv.Config.Host[len("https://"):]),
		"--node-name", n.name, "--node-ip", n.nodeIP,
		"--data-dir", filepath.Join(n.dir, "data"), "--run-dir", filepath.Join(n.dir, "run"),
		"--cni-conf-dir", filepath.Join(n.dir, "cni"), "--cni-bin-dir", cniBin,
		"--containerd-socket", containerdSocket,
		"--restart-backoff", "1s", "--log-level", "debug",
		"--bpf-pin-dir", n.pinDir(),
		"--routing", n.routing,
	}
	if first {
		token, err := os.ReadFile(filepath.Join(n.srv.DataDir, "join-token"))
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--token", strings.TrimSpace(string(token)),
			"--ca-file", filepath.Join(n.srv.DataDir, "pki", "ca.crt"),
			"--import-images", imagesTar)
	}
	logf, err := os.OpenFile(filepath.Join(n.dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies (a -timeout panic runs no cleanup), the
	// agent must die too: Pdeathsig fires when the forking thread ends, so
	// fork from a locked thread that lives until stopAgent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error)
	n.agentThread = make(chan struct{})
	go func(release <-chan struct{}) {
		runtime.LockOSThread()
		started <- cmd.Start()
		<-release
	}(n.agentThread)
	if err := <-started; err != nil {
		t.Fatalf("start agent: %v", err)
	}
	n.agent, n.agentLog = cmd, logf
}

// stopAgent ends the agent; kill is a crash (SIGKILL).
func (n *node) stopAgent(kill bool) {
	if n.agent == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	n.agent.Process.Signal(sig)
	done := make(chan struct{})
	go func() { n.agent.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		n.agent.Process.Kill()
		<-done
	}
	n.agent = nil
	n.agentLog.Close()
	close(n.agentThread)
}

func (n *node) agentLogText() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "agent.log"))
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

func (n *node) waitNodeReady() {
	n.t.Helper()
	n.eventually(90*time.Second, "node Ready with a podCIDR", func() (bool, string) {
		node, err := n.cs.CoreV1().Nodes().Get(context.Background(), n.name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue && node.Spec.PodCIDR != "", fmt.Sprintf("%s %s podCIDR=%q", c.Status, c.Message, node.Spec.PodCIDR)
			}
		}
		return false, "no Ready condition"
	})
}

// eventually polls cond until it holds or the timeout ends.
func (n *node) eventually(timeout time.Duration, what string, cond func() (bool, string)) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(200 * time.Millisecond)
	}
	n.t.Fatalf("timed out waiting for %s; last: %s\nagent log tail:\n%s", what, last, n.agentLogText())
}

// kubectl runs the real kubectl (embedded in capstan) as the admin.
func (n *node) kubectl(args ...string) (string, error) {
	// A hung stream must fail the test, not stall it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, capstanBin, append([]string{"kubectl"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+n.srv.Kubeconfig)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// inNode runs f inside the node's network namespace.
func (n *node) inNode(f func() error) error {
	return ns.WithNetNSPath(n.netns, func(ns.NetNS) error { return f() })
}

// httpGet fetches a URL from inside the node's namespace.
func (n *node) httpGet(hostport, path string) (string, error) {
	var body string
	err := n.inNode(func() error {
		conn, err := net.DialTimeout("tcp", hostport, 3*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path)
		var b bytes.Buffer
		b.ReadFrom(conn)
		body = b.String()
		return nil
	})
	if i := strings.Index(body, "\r\n\r\n"); i >= 0 {
		body = body[i+4:]
	}
	return body, err
}

// links lists the interface names in the node's namespace.
func (n *node) links() []string {
	var names []string
	n.inNode(func() error {
		ls, err := netlink.LinkList()
		for _, l := range ls {
			names = append(names, l.Attrs().Name)
		}
		return err
	})
	return names
}

func (n *node) containerd() *client.Client {
	c, err := client.New(containerdSocket)
	if err != nil {
		n.t.Fatal(err)
	}
	return c
}

// podContainers lists containerd containers of a pod UID on this node.
func (n *node) podContainers(uid string) []string {
	c := n.containerd()
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), "capstan-"+n.name)
	cs, err := c.Containers(ctx, fmt.Sprintf(`labels."io.capstan.pod.uid"==%s`, uid))
	if err != nil {
		n.t.Fatal(err)
	}
	var ids []string
	for _, x := range cs {
		ids = append(ids, x.ID())
	}
	return ids
}

// cleanup deletes every pod through the agent, stops it, and removes what
// is left: containers, images and namespace in containerd, and cgroups.
func (n *node) cleanup() {
	ctx := context.Background()
	zero := int64(0)
	if n.agent != nil {
		n.cs.CoreV1().Pods("").DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		pods, _ := n.cs.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		for _, p := range pods.Items {
			n.cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		}
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			pins, _ := os.ReadDir(filepath.Join(n.dir, "run", n.name, "netns"))
			if len(n.allContainers()) == 0 && len(pins) == 0 {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		n.stopAgent(false)
	}
	// Whatever the agent did not tear down: unpin its pod namespaces.
	pins, _ := filepath.Glob(filepath.Join(n.dir, "run", n.name, "netns", "*"))
	for _, p := range pins {
		syscall.Unmount(p, syscall.MNT_DETACH)
	}
	c, err := client.New(containerdSocket)
	if err == nil {
		defer c.Close()
		cctx := namespaces.WithNamespace(ctx, "capstan-"+n.name)
		cs, _ := c.Containers(cctx)
		for _, x := range cs {
			if task, err := x.Task(cctx, nil); err == nil {
				task.Delete(cctx, client.WithProcessKill)
			}
			x.Delete(cctx, client.WithSnapshotCleanup)
		}
		imgs, _ := c.ImageService().List(cctx)
		for _, im := range imgs {
			// Synchronous: containerd's GC drops the content and
			// snapshots before the call returns.
			c.ImageService().Delete(cctx, im.Name, images.SynchronousDelete())
		}
		// Let containerd's GC drop content and snapshots, then the namespace.
		for i := 0; i < 50; i++ {
			if c.NamespaceService().Delete(ctx, "capstan-"+n.name) == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Unpinning detaches the dataplane's programs (cgroup and tc links).
	os.RemoveAll(n.pinDir())
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/capstan/" + n.name)
	defer func() {
		// The shared parent goes too once no node uses it.
		parents, _ := filepath.Glob("/sys/fs/cgroup/*/capstan")
		for _, p := range append(parents, "/sys/fs/cgroup/capstan") {
			os.Remove(p)
		}
	}()
	if d := "/sys/fs/cgroup/capstan/" + n.name; dirExists(d) {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		subs, _ := filepath.Glob(d + "/pod*")
		for _, s := range subs {
			os.Remove(s)
		}
		os.Remove(d)
	}
}

// pinDir is the node's BPF pin directory, on a bpffs of the test's own.
func (n *node) pinDir() string { return filepath.Join(n.dir, "bpf", n.name) }

// mountBPFFS mounts the test's bpf filesystem; cleanup unmounts it.
func (n *node) mountBPFFS() {
	dir := filepath.Join(n.dir, "bpf")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		n.t.Fatal(err)
	}
	if err := syscall.Mount("bpffs", dir, "bpf", 0, ""); err != nil {
		n.t.Fatalf("mount bpffs: %v", err)
	}
	n.t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
}

func (n *node) allContainers() []string {
	c := n.containerd()
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), "capstan-"+n.name)
	cs, _ := c.Containers(ctx)
	var ids []string
	for _, x := range cs {
		ids = append(ids, x.ID())
	}
	return ids
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
