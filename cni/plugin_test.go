package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/capstan-net/capstan/ipam"
)

// pluginDir holds the plugin binary, built once by TestMain.
var pluginDir string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "capstan-cni-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// go test puts its own GOROOT/bin first in PATH.
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, PluginType), "github.com/capstan-net/capstan/cmd/capstan-cni")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build %s: %v\n", PluginType, err)
		return 1
	}
	pluginDir = dir
	return m.Run()
}

func requireRoot(t *testing.T) {
	t.Helper()
	// A failure, not a skip: these tests exist to drive the real kernel.
	if os.Geteuid() != 0 {
		t.Fatal("the CNI plugin tests need root (netns, veth, routes)")
	}
}

func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		// Lazy unmount: a plugin forked for a parallel test may briefly hold a copy of the fd.
		if err := unix.Unmount(n.Path(), unix.MNT_DETACH); err != nil {
			t.Errorf("unmount netns: %v", err)
		}
		if err := os.Remove(n.Path()); err != nil {
			t.Errorf("remove netns: %v", err)
		}
	})
	return n
}

// harness is one simulated node (its own netns, data and endpoints dirs) running the plugin
// through libcni, as a runtime would.
type harness struct {
	t       *testing.T
	node    ns.NetNS
	dataDir string
	epDir   string
	cacheD  string
	conf    map[string]any // the plugin entry
}

func newHarness(t *testing.T, podCIDR string) *harness {
	t.Helper()
	requireRoot(t)
	t.Parallel()
	tmp := t.TempDir()
	h := &harness{
		t:       t,
		node:    newNS(t),
		dataDir: filepath.Join(tmp, "ipam"),
		epDir:   filepath.Join(tmp, "endpoints"),
		cacheD:  filepath.Join(tmp, "cache"),
	}
	h.conf = map[string]any{
		"type":         PluginType,
		"podCIDR":      podCIDR,
		"dataDir":      h.dataDir,
		"endpointsDir": h.epDir,
		"mtu":          1400,
	}
	return h
}

func (h *harness) confList(version string) []byte {
	h.t.Helper()
	data, err := json.Marshal(map[string]any{"cniVersion": version, "name": "capstan", "plugins": []any{h.conf}})
	if err != nil {
		h.t.Fatal(err)
	}
	return data
}

func (h *harness) list() *libcni.NetworkConfigList {
	h.t.Helper()
	l, err := libcni.NetworkConfFromBytes(h.confList("1.1.0"))
	if err != nil {
		h.t.Fatal(err)
	}
	return l
}

func (h *harness) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, h.cacheD, nil)
}

// inNode runs fn on a thread in the node netns; plugins exec'd from it run there too.
func (h *harness) inNode(fn func() error) error {
	return h.node.Do(func(ns.NetNS) error { return fn() })
}

func rt(id string, pod ns.NetNS) *libcni.RuntimeConf {
	r := &libcni.RuntimeConf{
		ContainerID: id,
		IfName:      "eth0",
		Args:        [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "web-" + id}, {"K8S_POD_UID", "uid-" + id}},
	}
	if pod != nil {
		r.NetNS = pod.Path()
	}
	return r
}

func (h *harness) add(id string, pod ns.NetNS) (*current.Result, error) {
	var res types.Result
	list := h.list()
	err := h.inNode(func() (err error) {
		res, err = h.cni().AddNetworkList(context.Background(), list, rt(id, pod))
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (h *harness) mustAdd(id string, pod ns.NetNS) *current.Result {
	h.t.Helper()
	res, err := h.add(id, pod)
	if err != nil {
		h.t.Fatalf("ADD %s: %v", id, err)
	}
	return res
}

func (h *harness) check(id string, pod ns.NetNS) error {
	list := h.list()
	return h.inNode(func() error { return h.cni().CheckNetworkList(context.Background(), list, rt(id, pod)) })
}

func (h *harness) del(id string, pod ns.NetNS) error {
	list := h.list()
	return h.inNode(func() error { return h.cni().DelNetworkList(context.Background(), list, rt(id, pod)) })
}

// exec runs the plugin directly with raw stdin, for configs libcni would refuse to parse.
func (h *harness) exec(stdin []byte, args *invoke.Args) error {
	args.Path = pluginDir
	return h.inNode(func() error {
		return invoke.ExecPluginWithoutResult(context.Background(), filepath.Join(pluginDir, PluginType), stdin, args, nil)
	})
}

func handle(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	hd, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hd.Close)
	return hd
}

func wantCode(t *testing.T, err error, code uint, msgPart string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want a CNI error with code %d", err, err, code)
	}
	if e.Code != code {
		t.Errorf("code %d (%v), want %d", e.Code, e, code)
	}
	if !strings.Contains(e.Error(), msgPart) {
		t.Errorf("error %q does not mention %q", e, msgPart)
	}
}

func routesTo(t *testing.T, hd *netlink.Handle, dst netip.Addr) []netlink.Route {
	t.Helper()
	all, err := retryDump(func() ([]netlink.Route, error) { return hd.RouteList(nil, family(dst)) })
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(all, func(r netlink.Route) bool { return !isHostRoute(r, dst) })
}

// assertGone checks that nothing of the attachment is left in the node netns or on disk.
func (h *harness) assertGone(id string, ip netip.Addr) {
	t := h.t
	t.Helper()
	node := handle(t, h.node)
	if _, err := node.LinkByName(HostIfName(id, "eth0")); !isNotFound(err) {
		t.Errorf("host veth of %s still there (%v)", id, err)
	}
	if ip.IsValid() {
		if r := routesTo(t, node, ip); len(r) > 0 {
			t.Errorf("routes to %s remain: %v", ip, r)
		}
		if _, err := os.Stat(filepath.Join(h.dataDir, ip.String())); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("ipam record %s remains (%v)", ip, err)
		}
	}
	if _, err := os.Stat(filepath.Join(h.epDir, EndpointFileName(id, "eth0"))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("endpoint record of %s remains (%v)", id, err)
	}
}

func podIP(t *testing.T, res *current.Result) netip.Addr {
	t.Helper()
	if len(res.IPs) == 0 {
		t.Fatalf("result without IPs: %+v", res)
	}
	a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	return a.Unmap()
}

// tcpRoundTrip connects from one netns to a listener in another and echoes a line.
func tcpRoundTrip(t *testing.T, from, to ns.NetNS, addr netip.Addr) {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func(ns.NetNS) (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	var c net.Conn
	if err := from.Do(func(ns.NetNS) (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("connect to %s: %v", ln.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo over %s: %q, %v", ln.Addr(), buf, err)
	}
}

func readSysctl(t *testing.T, n ns.NetNS, path string) string {
	t.Helper()
	var v []byte
	if err := n.Do(func(ns.NetNS) (err error) {
		v, err = os.ReadFile(path)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

func TestAddCheckDel(t *testing.T) {
	h := newHarness(t, "10.244.1.0/24")
	pod := newNS(t)
	res := h.mustAdd("c1", pod)

	ip := podIP(t, res)
	gw := netip.MustParseAddr("10.244.1.1")
	hostName := HostIfName("c1", "eth0")
	if !netip.MustParsePrefix("10.244.1.0/24").Contains(ip) || ip == gw {
		t.Fatalf("pod address %s", ip)
	}
	if ones, _ := res.IPs[0].Address.Mask.Size(); ones != 32 || !res.IPs[0].Gateway.Equal(gw.AsSlice()) {
		t.Errorf("result IP %v", res.IPs[0])
	}
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostName || res.Interfaces[1].Name != "eth0" ||
		res.Interfaces[1].Sandbox != pod.Path() || *res.IPs[0].Interface != 1 {
		t.Errorf("result interfaces %v, ips %v", res.Interfaces, res.IPs)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || !res.Routes[0].GW.Equal(gw.AsSlice()) {
		t.Errorf("result routes %v", res.Routes)
	}

	// Pod side.
	podH := handle(t, pod)
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().MTU != 1400 || eth0.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("pod eth0 mtu %d flags %v", eth0.Attrs().MTU, eth0.Attrs().Flags)
	}
	if !hasAddr(podH, eth0, ip) {
		t.Errorf("pod eth0 lacks %s/32", ip)
	}
	if lo, err := podH.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("pod lo not up (%v)", err)
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return podH.RouteList(eth0, netlink.FAMILY_V4) })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return isDefault(r) && r.Gw.Equal(gw.AsSlice()) }) {
		t.Errorf("pod has no default route via %s: %v", gw, routes)
	}

	// Node side.
	nodeH := handle(t, h.node)
	host, err := nodeH.LinkByName(hostName)
	if err != nil {
		t.Fatalf("host veth: %v", err)
	}
	if host.Attrs().MTU != 1400 || host.Attrs().Flags&net.FlagUp == 0 || eth0.Attrs().ParentIndex != host.Attrs().Index {
		t.Errorf("host veth mtu %d flags %v, pod peer index %d vs %d", host.Attrs().MTU, host.Attrs().Flags,
			eth0.Attrs().ParentIndex, host.Attrs().Index)
	}
	if !hasAddr(nodeH, host, gw) {
		t.Errorf("host veth lacks gateway %s/32", gw)
	}
	if r := routesTo(t, nodeH, ip); len(r) != 1 || r[0].LinkIndex != host.Attrs().Index || r[0].Scope != netlink.SCOPE_LINK {
		t.Errorf("node routes to %s: %v", ip, r)
	}
	if v := readSysctl(t, h.node, "/proc/sys/net/ipv4/ip_forward"); v != "1" {
		t.Errorf("node ip_forward = %s", v)
	}
	if v := readSysctl(t, h.node, "/proc/sys/net/ipv4/conf/"+hostName+"/rp_filter"); v != "0" {
		t.Errorf("host veth rp_filter = %s", v)
	}
	// The plugin ran in the node netns, not in ours.
	if _, err := netlink.LinkByName(hostName); !isNotFound(err) {
		t.Errorf("host veth found in the test's own netns (%v)", err)
	}

	// Endpoint record and IPAM.
	ep, err := ReadEndpoint(filepath.Join(h.epDir, "c1_eth0.json"))
	if err != nil {
		t.Fatal(err)
	}
	podNS, err := ns.GetNS(pod.Path())
	if err != nil {
		t.Fatal(err)
	}
	cookie, err := netnsCookie(podNS)
	podNS.Close()
	if err != nil || cookie == 0 {
		t.Fatalf("pod netns cookie %d: %v", cookie, err)
	}
	want := Endpoint{ContainerID: "c1", IfName: "eth0", HostIfName: hostName, HostIfIndex: host.Attrs().Index,
		HostMAC: host.Attrs().HardwareAddr.String(), PodMAC: eth0.Attrs().HardwareAddr.String(),
		PodIPs: []netip.Addr{ip}, Netns: pod.Path(), NetnsCookie: cookie, PodNamespace: "default", PodName: "web-c1", PodUID: "uid-c1"}
	if fmt.Sprint(*ep) != fmt.Sprint(want) {
		t.Errorf("endpoint record\n got %+v\nwant %+v", *ep, want)
	}
	store, err := ipam.Open(h.dataDir, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if held, err := store.Lookup("c1"); err != nil || len(held) != 1 || held[0].IP != ip {
		t.Errorf("ipam holds %v, %v for c1", held, err)
	}

	// Traffic both ways: node to pod, pod to its gateway.
	tcpRoundTrip(t, h.node, pod, ip)
	tcpRoundTrip(t, pod, h.node, gw)

	if err := h.check("c1", pod); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}

	if err := h.del("c1", pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	h.assertGone("c1", ip)
	if _, err := podH.LinkByName("eth0"); !isNotFound(err) {
		t.Errorf("pod eth0 still there (%v)", err)
	}
	if err := h.del("c1", pod); err != nil {
		t.Errorf("second DEL: %v", err)
	}
}

func TestCheckFindsDamage(t *testing.T) {
	h := newHarness(t, "10.244.1.0/24")
	pod := newNS(t)
	res := h.mustAdd("c1", pod)
	gw := netip.MustParseAddr("10.244.1.1")

	podH := handle(t, pod)
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	def := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: defaultDst(gw), Gw: gw.AsSlice()}
	if err := podH.RouteDel(def); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(h.epDir, "c1_eth0.json")); err != nil {
		t.Fatal(err)
	}
	err = h.check("c1", pod)
	wantCode(t, err, types.ErrInternal, "no default route via 10.244.1.1")
	wantCode(t, err, types.ErrInternal, "endpoint record")

	// A released reservation is noticed too.
	if err := podH.RouteAdd(def); err != nil {
		t.Fatal(err)
	}
	store, err := ipam.Open(h.dataDir, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Release(ipam.Attachment{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, h.check("c1", pod), types.ErrInternal, "ipam reserves [] for c1/eth0, prevResult says ["+podIP(t, res).String())

	// A pod netns that is gone is an unknown container.
	gone := rt("c1", nil)
	gone.NetNS = "/run/netns/capstan-cni-test-no-such-netns"
	list := h.list()
	wantCode(t, h.inNode(func() error {
		return h.cni().CheckNetworkList(context.Background(), list, gone)
	}), types.ErrUnknownContainer, "CNI_NETNS")
}

func TestAddIsIdempotent(t *testing.T) {
	h := newHarness(t, "10.244.2.0/24")
	pod := newNS(t)
	first := h.mustAdd("c1", pod)
	again := h.mustAdd("c1", pod)
	if podIP(t, first) != podIP(t, again) || first.Interfaces[1].Mac != again.Interfaces[1].Mac {
		t.Errorf("second ADD: %v, first %v", again, first)
	}
	if err := h.check("c1", pod); err != nil {
		t.Errorf("CHECK after repeated ADD: %v", err)
	}
	// A second container in another netns gets another address and veth.
	pod2 := newNS(t)
	other := h.mustAdd("c2", pod2)
	if podIP(t, other) == podIP(t, first) || other.Interfaces[0].Name == first.Interfaces[0].Name {
		t.Errorf("c2 %v collides with c1 %v", other, first)
	}
	tcpRoundTrip(t, pod, pod2, podIP(t, other)) // pod to pod through the node
	if err := h.del("c1", pod); err != nil {
		t.Errorf("DEL c1: %v", err)
	}
	if err := h.del("c2", pod2); err != nil {
		t.Errorf("DEL c2: %v", err)
	}
	h.assertGone("c1", podIP(t, first))
	h.assertGone("c2", podIP(t, other))
}

func TestDelWithoutNetns(t *testing.T) {
	h := newHarness(t, "10.244.3.0/24")
	pod := newNS(t)
	ip := podIP(t, h.mustAdd("c1", pod))
	// The runtime may have removed the netns already and pass no CNI_NETNS.
	if err := h.del("c1", nil); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
	h.assertGone("c1", ip)
	if err := h.del("c1", nil); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	// DEL of something never added is fine too.
	if err := h.del("never-added", nil); err != nil {
		t.Errorf("DEL of unknown container: %v", err)
	}
	// After the node's Capstan was removed (its address store with it), a late DEL
	// succeeds without making the store again.
	if err := os.RemoveAll(h.dataDir); err != nil {
		t.Fatal(err)
	}
	if err := h.del("c1", nil); err != nil {
		t.Errorf("DEL after the store went: %v", err)
	}
	if _, err := os.Stat(h.dataDir); err == nil {
		t.Error("a DEL made the removed address store again")
	}
}

func TestAddUndoesOnFailure(t *testing.T) {
	t.Run("interface exists in pod", func(t *testing.T) {
		h := newHarness(t, "10.244.4.0/24")
		pod := newNS(t)
		squatter := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "squatter"}
		if err := handle(t, pod).LinkAdd(squatter); err != nil {
			t.Fatal(err)
		}
		_, err := h.add("c1", pod)
		wantCode(t, err, types.ErrInternal, "eth0 already exists")
		h.assertGone("c1", netip.MustParseAddr("10.244.4.2"))
	})
	t.Run("endpoint record not writable", func(t *testing.T) {
		h := newHarness(t, "10.244.4.0/24")
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		h.conf["endpointsDir"] = filepath.Join(file, "endpoints")
		pod := newNS(t)
		_, err := h.add("c1", pod)
		wantCode(t, err, types.ErrInternal, "endpoint")
		h.assertGone("c1", netip.MustParseAddr("10.244.4.2"))
		if _, err := handle(t, pod).LinkByName("eth0"); !isNotFound(err) {
			t.Errorf("pod eth0 left behind (%v)", err)
		}
	})
}

func TestExhaustion(t *testing.T) {
	h := newHarness(t, "10.244.5.0/30") // one pod address: .2
	pod1, pod2 := newNS(t), newNS(t)
	if ip := podIP(t, h.mustAdd("c1", pod1)); ip.String() != "10.244.5.2" {
		t.Errorf("c1 got %s", ip)
	}
	_, err := h.add("c2", pod2)
	wantCode(t, err, CodeExhausted, "no free address in 10.244.5.0/30")
	h.assertGone("c2", netip.Addr{})
	if _, err := handle(t, pod2).LinkByName("eth0"); !isNotFound(err) {
		t.Errorf("pod2 eth0 exists after a failed ADD (%v)", err)
	}
	// STATUS says the node cannot take pods until one leaves.
	wantCode(t, h.status(), types.ErrPluginNotAvailable, "no free address in 10.244.5.0/30")
	if err := h.del("c1", pod1); err != nil {
		t.Fatal(err)
	}
	if err := h.status(); err != nil {
		t.Errorf("STATUS after DEL: %v", err)
	}
	h.mustAdd("c2", pod2)
}

func (h *harness) status() error {
	list := h.list()
	return h.inNode(func() error { return h.cni().GetStatusNetworkList(context.Background(), list) })
}

func TestStatus(t *testing.T) {
	h := newHarness(t, "10.244.6.0/24")
	if err := h.status(); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	h.conf["podCIDR"] = ""
	wantCode(t, h.status(), types.ErrPluginNotAvailable, "podCIDR is missing")
	h.conf["podCIDR"] = "10.244.6.0/33"
	wantCode(t, h.status(), types.ErrPluginNotAvailable, "podCIDR")
	h.conf["podCIDR"] = "10.244.6.0/24"

	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h.conf["dataDir"] = filepath.Join(file, "ipam")
	wantCode(t, h.status(), types.ErrPluginNotAvailable, "not writable")
}

func TestConfigErrors(t *testing.T) {
	h := newHarness(t, "10.244.7.0/24")
	pod := newNS(t)
	addArgs := func() *invoke.Args {
		return &invoke.Args{Command: "ADD", ContainerID: "c1", NetNS: pod.Path(), IfName: "eth0"}
	}
	withConf := func(key string, val any) []byte {
		c := map[string]any{"cniVersion": "1.1.0", "name": "capstan"}
		for k, v := range h.conf {
			c[k] = v
		}
		if val == nil {
			delete(c, key)
		} else {
			c[key] = val
		}
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}

	for _, tc := range []struct {
		name  string
		stdin []byte
		args  *invoke.Args
		code  uint
		msg   string
	}{
		{"malformed json", []byte(`{"cniVersion":"1.1.0","name":"capstan",`), addArgs(), types.ErrDecodingFailure, "unmarshal"},
		{"wrong field type", withConf("podCIDR", 24), addArgs(), types.ErrDecodingFailure, "decode network config"},
		{"missing podCIDR", withConf("podCIDR", nil), addArgs(), types.ErrInvalidNetworkConfig, "podCIDR is missing"},
		{"bad podCIDR", withConf("podCIDR", "10.244.7.1/24"), addArgs(), types.ErrInvalidNetworkConfig, "host bits"},
		{"tiny podCIDR", withConf("podCIDR", "10.244.7.0/31"), addArgs(), types.ErrInvalidNetworkConfig, "too small"},
		{"missing dataDir", withConf("dataDir", nil), addArgs(), types.ErrInvalidNetworkConfig, "dataDir is missing"},
		{"relative endpointsDir", withConf("endpointsDir", "run/ep"), addArgs(), types.ErrInvalidNetworkConfig, "endpointsDir"},
		{"bad mtu", withConf("mtu", 10), addArgs(), types.ErrInvalidNetworkConfig, "mtu"},
		{"bad cniVersion", withConf("cniVersion", "9.9.9"), addArgs(), types.ErrIncompatibleCNIVersion, "incompatible"},
		{"missing netns", withConf("x", nil), &invoke.Args{Command: "ADD", ContainerID: "c1", IfName: "eth0"},
			types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"netns does not exist", withConf("x", nil), &invoke.Args{Command: "ADD", ContainerID: "c1", IfName: "eth0",
			NetNS: "/run/netns/capstan-cni-test-no-such-netns"}, types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"bad CNI_ARGS", withConf("x", nil), &invoke.Args{Command: "ADD", ContainerID: "c1", IfName: "eth0",
			NetNS: pod.Path(), PluginArgsStr: "IgnoreUnknown=1;garbage"}, types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, h.exec(tc.stdin, tc.args), tc.code, tc.msg)
		})
	}
	// None of it left anything behind.
	h.assertGone("c1", netip.MustParseAddr("10.244.7.2"))
	if _, err := handle(t, pod).LinkByName("eth0"); !isNotFound(err) {
		t.Errorf("pod eth0 exists after failed ADDs (%v)", err)
	}
}

func TestGC(t *testing.T) {
	h := newHarness(t, "10.244.8.0/24")
	pods := map[string]ns.NetNS{"c1": newNS(t), "c2": newNS(t), "c3": newNS(t)}
	ips := map[string]netip.Addr{}
	for _, id := range []string{"c1", "c2", "c3"} {
		ips[id] = podIP(t, h.mustAdd(id, pods[id]))
	}
	// A runtime that lost its cache: libcni cannot DEL from it, so only the plugin's GC cleans.
	gc := func(args *libcni.GCArgs) error {
		fresh := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), nil)
		list := h.list()
		return h.inNode(func() error { return fresh.GCNetworkList(context.Background(), list, args) })
	}
	if err := gc(nil); err != nil {
		t.Fatalf("GC without a valid list: %v", err)
	}
	for id, pod := range pods {
		if err := h.check(id, pod); err != nil {
			t.Errorf("GC without a valid list removed something of %s: %v", id, err)
		}
	}

	// c3 keeps only its veth: GC must still know it by the alias.
	if err := os.Remove(filepath.Join(h.epDir, EndpointFileName("c3", "eth0"))); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(h.dataDir, ips["c3"].String())); err != nil {
		t.Fatal(err)
	}
	if err := gc(&libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "c1", IfName: "eth0"}}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if err := h.check("c1", pods["c1"]); err != nil {
		t.Errorf("GC damaged the valid attachment: %v", err)
	}
	h.assertGone("c2", ips["c2"])
	h.assertGone("c3", ips["c3"])

	if err := gc(&libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
		t.Fatalf("GC of everything: %v", err)
	}
	h.assertGone("c1", ips["c1"])
}

func TestDualStack(t *testing.T) {
	h := newHarness(t, "")
	delete(h.conf, "podCIDR")
	h.conf["podCIDRs"] = []string{"fd00:10:244:9::/64", "10.244.9.0/24"}
	pod := newNS(t)
	res := h.mustAdd("c1", pod)
	if len(res.IPs) != 2 {
		t.Fatalf("result IPs %v", res.IPs)
	}
	v4, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	v6, _ := netip.AddrFromSlice(res.IPs[1].Address.IP)
	v4 = v4.Unmap()
	if v4.String() != "10.244.9.2" || v6.String() != "fd00:10:244:9::2" || !res.IPs[1].Gateway.Equal(net.ParseIP("fd00:10:244:9::1")) {
		t.Errorf("result IPs %v", res.IPs)
	}
	if v := readSysctl(t, h.node, "/proc/sys/net/ipv6/conf/all/forwarding"); v != "1" {
		t.Errorf("node ipv6 forwarding = %s", v)
	}
	tcpRoundTrip(t, h.node, pod, v6)
	tcpRoundTrip(t, pod, h.node, netip.MustParseAddr("fd00:10:244:9::1"))
	tcpRoundTrip(t, h.node, pod, v4)
	if err := h.check("c1", pod); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := h.del("c1", pod); err != nil {
		t.Fatal(err)
	}
	h.assertGone("c1", v4)
	h.assertGone("c1", v6)
}

func TestOlderSpecVersion(t *testing.T) {
	h := newHarness(t, "10.244.10.0/24")
	pod := newNS(t)
	l, err := libcni.NetworkConfFromBytes(h.confList("0.4.0"))
	if err != nil {
		t.Fatal(err)
	}
	var res types.Result
	if err := h.inNode(func() (err error) {
		res, err = h.cni().AddNetworkList(context.Background(), l, rt("c1", pod))
		if err == nil {
			err = h.cni().CheckNetworkList(context.Background(), l, rt("c1", pod))
		}
		return err
	}); err != nil {
		t.Fatalf("ADD+CHECK at 0.4.0: %v", err)
	}
	if res.Version() != "0.4.0" {
		t.Errorf("result version %s", res.Version())
	}
	if err := h.inNode(func() error { return h.cni().DelNetworkList(context.Background(), l, rt("c1", pod)) }); err != nil {
		t.Fatal(err)
	}
	h.assertGone("c1", netip.MustParseAddr("10.244.10.2"))

	var info interface{ SupportedVersions() []string }
	info, err = h.cni().GetVersionInfo(context.Background(), PluginType)
	if err != nil || !slices.Contains(info.SupportedVersions(), "1.1.0") {
		t.Errorf("VERSION: %v, %v", info, err)
	}
}

func TestNames(t *testing.T) {
	n := HostIfName("0123456789abcdef", "eth0")
	if len(n) != 14 || !strings.HasPrefix(n, "cap") || n != HostIfName("0123456789abcdef", "eth0") || n == HostIfName("0123456789abcdef", "net1") {
		t.Errorf("HostIfName = %q", n)
	}
	a := ipam.Attachment{ContainerID: "abc-1.x_y", IfName: "eth0"}
	network, got, ok := parseOwnerAlias(ownerAlias("capstan", a))
	if !ok || network != "capstan" || got != a {
		t.Errorf("alias round trip: %q %v %v", network, got, ok)
	}
	for _, bad := range []string{"", "capstan-cni/", "capstan-cni/n/c", "other/n/c/eth0", "capstan-cni/n//eth0"} {
		if _, _, ok := parseOwnerAlias(bad); ok {
			t.Errorf("parseOwnerAlias(%q) accepted", bad)
		}
	}
	if _, err := parseArgs("K8S_POD_NAME=a;=b"); err == nil {
		t.Error("parseArgs accepted an empty key")
	}
	pa, err := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u;K8S_POD_INFRA_CONTAINER_ID=x")
	if err != nil || pa != (podArgs{"ns", "p", "u"}) {
		t.Errorf("parseArgs = %+v, %v", pa, err)
	}
}
