package ebpf

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

func TestAttachTCX(t *testing.T) {
	node := enterTestNetns(t)
	d := newTestDatapath(t, testConfig())
	wire, err := netlink.LinkByName("wire0")
	if err != nil {
		t.Fatal(err)
	}

	na, err := d.AttachNode(node)
	if errors.Is(err, ErrNotSupported) {
		t.Skipf("kernel without tcx: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	pa, err := d.AttachPod(wire.Attrs().Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []*Attachment{na, pa} {
		if len(a.Links()) != 2 {
			t.Fatalf("%d links, want ingress and egress", len(a.Links()))
		}
		for _, l := range a.Links() {
			info, err := l.Info()
			if err != nil {
				t.Fatal(err)
			}
			if info.Type != link.TCXType {
				t.Fatalf("link type %v, want tcx", info.Type)
			}
		}
	}
	if err := na.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pa.Close(); err != nil {
		t.Fatal(err)
	}
	// Attaching again after a detach works: nothing was left behind.
	again, err := d.AttachNode(node)
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
}
