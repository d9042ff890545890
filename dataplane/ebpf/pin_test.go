package ebpf

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// pinnedLinks reads every link pinned under pinDir/links: pin name -> (link ID, program ID).
func pinnedLinks(t *testing.T, pinDir string) map[string][2]uint32 {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(pinDir, "links"))
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string][2]uint32)
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(pinDir, "links", e.Name()), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = [2]uint32{uint32(info.ID), uint32(info.Program)}
	}
	return out
}

func progID(t *testing.T, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("kernel reports no program IDs")
	}
	return uint32(id)
}

func TestPinnedLinksOutliveDatapathAndAreTakenOver(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	home := filepath.Join(cgroup2Mount(t), ownCgroup(t))
	cgA, err := os.MkdirTemp(home, "capstan-pin-a-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cgA) })
	cgB, err := os.MkdirTemp(home, "capstan-pin-b-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cgB) })

	d1, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock1, err := d1.AttachSocketLBPinned(cgA)
	if err != nil {
		t.Fatal(err)
	}
	node1, err := d1.AttachNodePinned(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	first := pinnedLinks(t, cfg.PinDir)
	if len(first) != 7 {
		t.Fatalf("%d pinned links, want 5 socket + 2 tc: %v", len(first), first)
	}
	// The daemon goes away: handles closed, links stay.
	if err := sock1.Release(); err != nil {
		t.Fatal(err)
	}
	if err := node1.Release(); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	if got := pinnedLinks(t, cfg.PinDir); len(got) != 7 {
		t.Fatalf("links gone after release: %v", got)
	}

	// A new daemon takes the same links over and points them at its programs.
	d2 := newTestDatapath(t, cfg)
	sock2, err := d2.AttachSocketLBPinned(cgA)
	if err != nil {
		t.Fatal(err)
	}
	node2, err := d2.AttachNodePinned(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	second := pinnedLinks(t, cfg.PinDir)
	wantProg := map[string]uint32{
		"sock-connect4": progID(t, d2.sock.SockConnect4), "sock-release": progID(t, d2.sock.SockRelease),
		"node-" + itoa(ifindex) + "-ingress": progID(t, d2.tcNode.TcNodeIngress),
	}
	for name, v := range second {
		if v[0] != first[name][0] {
			t.Errorf("link %s replaced (id %d -> %d), want it taken over", name, first[name][0], v[0])
		}
		if v[1] == first[name][1] {
			t.Errorf("link %s still runs the old program %d", name, v[1])
		}
		if w, ok := wantProg[name]; ok && v[1] != w {
			t.Errorf("link %s runs program %d, want %d", name, v[1], w)
		}
	}
	sock2.Release()

	// Another cgroup: the old links are replaced, not kept attached to the old cgroup.
	sock3, err := d2.AttachSocketLBPinned(cgB)
	if err != nil {
		t.Fatal(err)
	}
	third := pinnedLinks(t, cfg.PinDir)
	if third["sock-connect4"][0] == second["sock-connect4"][0] {
		t.Error("link for the old cgroup kept")
	}
	if err := sock3.Close(); err != nil {
		t.Fatal(err)
	}
	if got := pinnedLinks(t, cfg.PinDir); len(got) != 2 {
		t.Fatalf("Close left socket links pinned: %v", got)
	}

	// The device goes while the links are pinned: PruneLinks removes the dead links.
	node2.Release()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	n, err := d2.PruneLinks()
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("pruned %d links, want 2", n)
	}
	if got := pinnedLinks(t, cfg.PinDir); len(got) != 0 {
		t.Fatalf("links left: %v", got)
	}
}

func itoa(i int) string { return fmt.Sprint(i) }

func TestDetachPinnedRemovesOnlyTheNamedKinds(t *testing.T) {
	ifindex := enterTestNetns(t)
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	home := filepath.Join(cgroup2Mount(t), ownCgroup(t))
	cg, err := os.MkdirTemp(home, "capstan-detach-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cg) })
	d := newTestDatapath(t, cfg)
	sock, err := d.AttachSocketLBPinned(cg)
	if err != nil {
		t.Fatal(err)
	}
	node, err := d.AttachNodePinned(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	// The daemon's handles go, as when it restarts in another mode.
	sock.Release()
	node.Release()
	n, err := d.DetachPinned("sock-")
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Fatalf("detached %d links, want the 5 socket ones", n)
	}
	got := pinnedLinks(t, cfg.PinDir)
	if len(got) != 2 {
		t.Fatalf("links left: %v, want the 2 tc ones", got)
	}
	// Detached means detached in the kernel, not only unpinned.
	progs, err := link.QueryPrograms(link.QueryOptions{Target: int(mustOpen(t, cg).Fd()), Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		t.Fatal(err)
	}
	if len(progs.Programs) != 0 {
		t.Fatalf("connect4 programs still attached to the cgroup: %v", progs.Programs)
	}
	if n, err := d.DetachPinned("node-"); err != nil || n != 2 {
		t.Fatalf("detach node links: %d, %v", n, err)
	}
	progs, err = link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatal(err)
	}
	if len(progs.Programs) != 0 {
		t.Fatalf("tcx ingress programs still attached: %v", progs.Programs)
	}
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
