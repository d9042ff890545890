package daemon

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/capstan-net/capstan/cni"
	"github.com/capstan-net/capstan/internal/netnstest"
)

func TestServiceCIDRFromTheCluster(t *testing.T) {
	cs := fake.NewClientset(&networkingv1.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
		Spec:       networkingv1.ServiceCIDRSpec{CIDRs: []string{"fd00:10:96::/112", "10.43.0.0/16"}},
	})
	p, err := serviceCIDR(context.Background(), cs)
	if err != nil || p != netip.MustParsePrefix("10.43.0.0/16") {
		t.Fatalf("serviceCIDR = %v, %v; want the IPv4 range 10.43.0.0/16", p, err)
	}
	if _, err := serviceCIDR(context.Background(), fake.NewClientset()); err == nil || !strings.Contains(err.Error(), "--service-cidr") {
		t.Fatalf("no ServiceCIDR: %v, want an error naming --service-cidr", err)
	}
}

func TestDevicesByNodeAddress(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	a, b := netnstest.New(t, "dev-a"), netnstest.New(t, "dev-b")
	netnstest.Veth(t, a, "uplink", b, "peer")
	a.AddAddr(t, "uplink", netip.MustParsePrefix("192.0.2.7/24"))
	devs, err := devicesWith(a.Path(), []netip.Addr{netip.MustParseAddr("192.0.2.7")})
	if err != nil || len(devs) != 1 || devs[0] != "uplink" {
		t.Fatalf("devices = %v, %v; want [uplink]", devs, err)
	}
	if _, err := devicesWith(a.Path(), []netip.Addr{netip.MustParseAddr("192.0.2.8")}); err == nil || !strings.Contains(err.Error(), "--devices") {
		t.Fatalf("no device with the address: %v, want an error naming --devices", err)
	}
}

func TestOwnerRemoved(t *testing.T) {
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "capstan"}}
	w := &ownerWatch{cs: fake.NewClientset(ds), ns: "kube-system", name: "capstan"}
	if w.Removed() {
		t.Fatal("a DaemonSet that exists counts as removed: a rolling update would wipe the node")
	}
	now := metav1.Now()
	deleting := ds.DeepCopy()
	deleting.DeletionTimestamp = &now
	if w := (&ownerWatch{cs: fake.NewClientset(deleting), ns: "kube-system", name: "capstan"}); !w.Removed() {
		t.Fatal("a DaemonSet being deleted does not count as removed")
	}
	if w := (&ownerWatch{cs: fake.NewClientset(), ns: "kube-system", name: "capstan"}); !w.Removed() {
		t.Fatal("a deleted DaemonSet does not count as removed")
	}
	w.removed.Store(true)
	if !w.Removed() {
		t.Fatal("a deletion the watch saw does not count")
	}
}

func TestUninstallLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ns := netnstest.New(t, "uninstall")
	dir := t.TempDir()
	pin := filepath.Join(dir, "pins", "node-a")
	cfg := Config{
		NodeName: "node-a", Kubeconfig: "unused", PinDir: pin, Netns: ns.Path(),
		EndpointsDir: filepath.Join(dir, "run", "endpoints"),
		CNI: CNIConfig{ConfDir: filepath.Join(dir, "conf"), BinDir: filepath.Join(dir, "bin"),
			IPAMDir: filepath.Join(dir, "run", "ipam"), Portmap: "capstan-portmap"},
	}
	files := []string{
		filepath.Join(pin, "links", "node-in"), filepath.Join(cfg.CNI.ConfDir, cni.ConfListName),
		filepath.Join(cfg.CNI.BinDir, cni.PluginType), filepath.Join(cfg.CNI.BinDir, "capstan-portmap"),
		filepath.Join(cfg.EndpointsDir, "pod"), filepath.Join(cfg.CNI.IPAMDir, "10.244.0.2"),
	}
	other := filepath.Join(cfg.CNI.BinDir, "portmap") // the node's own plugin
	for _, f := range append(files, other) {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		dst := netnstest.IPNet(netip.MustParsePrefix("10.244.9.0/24"))
		if err := netlink.RouteAdd(&netlink.Route{Dst: dst, LinkIndex: lo.Attrs().Index, Protocol: routeProtocol}); err != nil {
			return err
		}
		_, err = ensureVXLAN("/proc")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s is still there", f)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("the node's own portmap was removed: %v", err)
	}
	if err := ns.Do(func() error {
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil || len(routes) > 0 {
			t.Errorf("routes left: %v %v", routes, err)
		}
		if _, err := netlink.LinkByName(vxlanDevice); err == nil {
			t.Errorf("%s left", vxlanDevice)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
