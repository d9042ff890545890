package ebpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Attachment is a set of attached programs; Close detaches them.
type Attachment struct {
	links []link.Link
	// pinned links stay attached after Release; Close unpins them first.
	pinned bool
}

// Close detaches every program of the attachment, removing the pins of a pinned one.
func (a *Attachment) Close() error {
	var errs []error
	for _, l := range a.links {
		if a.pinned {
			if err := l.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin link: %w", err))
			}
		}
		errs = append(errs, l.Close())
	}
	a.links = nil
	return errors.Join(errs...)
}

// Release closes the attachment's handles. Pinned links stay attached, so a daemon that
// exits this way keeps load-balancing until its successor takes the links over; unpinned
// links are detached, as by Close.
func (a *Attachment) Release() error {
	var errs []error
	for _, l := range a.links {
		errs = append(errs, l.Close())
	}
	a.links = nil
	return errors.Join(errs...)
}

// Links returns the underlying links, for pinning.
func (a *Attachment) Links() []link.Link { return a.links }

// AttachSocketLB attaches the socket programs (connect4, sendmsg4, recvmsg4, getpeername4,
// sock_release) to a cgroup v2 directory: the node's own subtree, never the root, since
// several simulated nodes may share one kernel.
func (d *Datapath) AttachSocketLB(cgroupPath string) (*Attachment, error) {
	p := d.Programs()
	return attachAll([]func() (link.Link, error){
		cgroupAttacher(cgroupPath, ebpf.AttachCGroupInet4Connect, p.SockConnect4),
		cgroupAttacher(cgroupPath, ebpf.AttachCGroupUDP4Sendmsg, p.SockSendmsg4),
		cgroupAttacher(cgroupPath, ebpf.AttachCGroupUDP4Recvmsg, p.SockRecvmsg4),
		cgroupAttacher(cgroupPath, ebpf.AttachCgroupInet4GetPeername, p.SockGetpeername4),
		cgroupAttacher(cgroupPath, ebpf.AttachCgroupInetSockRelease, p.SockRelease),
	})
}

// AttachPod attaches the pod programs with tcx to the host side of a pod's veth.
func (d *Datapath) AttachPod(ifindex int) (*Attachment, error) {
	p := d.Programs()
	return attachAll([]func() (link.Link, error){
		tcxAttacher(ifindex, ebpf.AttachTCXIngress, p.PodIngress),
		tcxAttacher(ifindex, ebpf.AttachTCXEgress, p.PodEgress),
	})
}

// AttachNode attaches the node programs with tcx to a node device (NodePort, external
// access, replies from remote backends).
func (d *Datapath) AttachNode(ifindex int) (*Attachment, error) {
	p := d.Programs()
	return attachAll([]func() (link.Link, error){
		tcxAttacher(ifindex, ebpf.AttachTCXIngress, p.NodeIngress),
		tcxAttacher(ifindex, ebpf.AttachTCXEgress, p.NodeEgress),
	})
}

// AttachTunnel attaches the tunnel program with tcx to the ingress of the collect-metadata
// VXLAN device (VXLAN mode): decapsulated packets go straight into local pods' netns, the
// rest to the stack. Without it the stack drops what arrives through the tunnel, whose inner
// destination MAC is not the device's.
// Its egress program gives packets the stack routed into the device their tunnel key.
func (d *Datapath) AttachTunnel(ifindex int) (*Attachment, error) {
	return attachAll([]func() (link.Link, error){
		tcxAttacher(ifindex, ebpf.AttachTCXIngress, d.tcNode.TcTunnelIngress),
		tcxAttacher(ifindex, ebpf.AttachTCXEgress, d.tcNode.TcTunnelEgress),
	})
}

func cgroupAttacher(path string, at ebpf.AttachType, prog *ebpf.Program) func() (link.Link, error) {
	return func() (link.Link, error) {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: at, Program: prog})
		if err != nil {
			return nil, fmt.Errorf("attach %s to cgroup %s: %w", at, path, err)
		}
		return l, nil
	}
}

func tcxAttacher(ifindex int, at ebpf.AttachType, prog *ebpf.Program) func() (link.Link, error) {
	return func() (link.Link, error) {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
		if err != nil {
			return nil, fmt.Errorf("attach tc program %s to ifindex %d: %w", at, ifindex, err)
		}
		return l, nil
	}
}

// attachAll attaches all or, on the first failure, detaches what it had attached.
func attachAll(steps []func() (link.Link, error)) (*Attachment, error) {
	a := &Attachment{}
	for _, step := range steps {
		l, err := step()
		if err != nil {
			return nil, errors.Join(err, a.Close())
		}
		a.links = append(a.links, l)
	}
	return a, nil
}
