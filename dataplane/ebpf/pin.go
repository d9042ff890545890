package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// linkDir is where links are pinned, beside the maps. Links live as long as their pins, so the
// programs keep running while no daemon holds them.
func (d *Datapath) linkDir() string { return filepath.Join(d.cfg.PinDir, "links") }

// pinnedLink is one link of a pinned attachment: where it is pinned, how to tell that a link
// found there is still attached to the right target, and how to attach afresh.
type pinnedLink struct {
	name    string
	prog    *ebpf.Program
	matches func(*link.Info) bool
	attach  func() (link.Link, error)
}

// AttachSocketLBPinned is AttachSocketLB with the links pinned under the pin directory.
// Links that a previous daemon pinned for the same cgroup are kept and switched to this
// Datapath's programs with an atomic link update, so no connect() misses the service
// translation across a restart; links pinned for another cgroup are detached.
func (d *Datapath) AttachSocketLBPinned(cgroupPath string) (*Attachment, error) {
	var st unix.Stat_t
	if err := unix.Stat(cgroupPath, &st); err != nil {
		return nil, fmt.Errorf("stat cgroup %s: %w", cgroupPath, err)
	}
	// On cgroup v2 a cgroup's ID is its directory's inode number.
	cgID := st.Ino
	p := d.Programs()
	var steps []pinnedLink
	for _, x := range []struct {
		name string
		at   ebpf.AttachType
		prog *ebpf.Program
	}{
		{"connect4", ebpf.AttachCGroupInet4Connect, p.SockConnect4},
		{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, p.SockSendmsg4},
		{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, p.SockRecvmsg4},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername, p.SockGetpeername4},
		{"release", ebpf.AttachCgroupInetSockRelease, p.SockRelease},
	} {
		steps = append(steps, pinnedLink{
			name: "sock-" + x.name,
			prog: x.prog,
			matches: func(i *link.Info) bool {
				c := i.Cgroup()
				return c != nil && c.CgroupId == cgID
			},
			attach: cgroupAttacher(cgroupPath, x.at, x.prog),
		})
	}
	return d.attachPinned(steps)
}

// AttachNodePinned is AttachNode with the links pinned under the pin directory, taken over
// on restart like AttachSocketLBPinned's.
func (d *Datapath) AttachNodePinned(ifindex int) (*Attachment, error) {
	p := d.Programs()
	return d.attachPinned(tcxPinned(d.kind("node"), ifindex, p.NodeIngress, p.NodeEgress))
}

// AttachPodPinned is AttachPod with the links pinned under the pin directory.
func (d *Datapath) AttachPodPinned(ifindex int) (*Attachment, error) {
	p := d.Programs()
	return d.attachPinned(tcxPinned(d.kind("pod"), ifindex, p.PodIngress, p.PodEgress))
}

// AttachTunnelPinned is AttachTunnel with the link pinned under the pin directory.
func (d *Datapath) AttachTunnelPinned(ifindex int) (*Attachment, error) {
	return d.attachPinned(tcxPinned("tunnel", ifindex, d.tcNode.TcTunnelIngress, d.tcNode.TcTunnelEgress))
}

// kind names a pinned link so policy-only programs are told apart from the eBPF mode's.
func (d *Datapath) kind(k string) string {
	if d.cfg.PolicyOnly {
		return "policy-" + k
	}
	return k
}

// tcxPinned makes the pinned links of a device; a nil program is not attached.
func tcxPinned(kind string, ifindex int, ingress, egress *ebpf.Program) []pinnedLink {
	mk := func(dir string, at ebpf.AttachType, prog *ebpf.Program) pinnedLink {
		return pinnedLink{
			name: fmt.Sprintf("%s-%d-%s", kind, ifindex, dir),
			prog: prog,
			matches: func(i *link.Info) bool {
				t := i.TCX()
				return t != nil && int(t.Ifindex) == ifindex
			},
			attach: tcxAttacher(ifindex, at, prog),
		}
	}
	var out []pinnedLink
	if ingress != nil {
		out = append(out, mk("ingress", ebpf.AttachTCXIngress, ingress))
	}
	if egress != nil {
		out = append(out, mk("egress", ebpf.AttachTCXEgress, egress))
	}
	return out
}

// attachPinned takes over or creates every link. On failure it detaches only the links it
// created: links taken over keep serving, as they did before the call.
func (d *Datapath) attachPinned(steps []pinnedLink) (*Attachment, error) {
	dir := d.linkDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create link pin dir: %w", err)
	}
	a := &Attachment{pinned: true}
	var created []link.Link
	fail := func(err error) (*Attachment, error) {
		var errs []error
		for _, l := range a.links {
			if containsLink(created, l) {
				errs = append(errs, l.Unpin())
			}
			errs = append(errs, l.Close())
		}
		return nil, errors.Join(append([]error{err}, errs...)...)
	}
	for _, s := range steps {
		path := filepath.Join(dir, s.name)
		l, fresh, err := d.takeOver(path, s)
		if err != nil {
			return fail(err)
		}
		a.links = append(a.links, l)
		if fresh {
			created = append(created, l)
		}
	}
	return a, nil
}

func containsLink(ls []link.Link, l link.Link) bool {
	for _, x := range ls {
		if x == l {
			return true
		}
	}
	return false
}

// takeOver returns the link pinned at path switched to s.prog, or a new pinned link when there
// is none or the pinned one is attached elsewhere (or nowhere: its device or cgroup is gone).
func (d *Datapath) takeOver(path string, s pinnedLink) (l link.Link, fresh bool, err error) {
	old, err := link.LoadPinnedLink(path, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, false, fmt.Errorf("load pinned link %s: %w", path, err)
	default:
		info, err := old.Info()
		if err == nil && s.matches(info) {
			if err := old.Update(s.prog); err != nil {
				old.Close()
				return nil, false, fmt.Errorf("update pinned link %s: %w", path, err)
			}
			d.log.Debug("took over pinned link", "pin", path, "link_id", info.ID)
			return old, false, nil
		}
		d.log.Info("replacing stale pinned link", "pin", path)
		if err := errors.Join(old.Unpin(), old.Close()); err != nil {
			return nil, false, fmt.Errorf("remove stale link %s: %w", path, err)
		}
	}
	l, err = s.attach()
	if err != nil {
		return nil, false, err
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return nil, false, fmt.Errorf("pin link %s: %w", path, err)
	}
	return l, true, nil
}

// PruneLinks removes pinned tc links whose device is gone (a pod veth deleted while no daemon
// ran), and returns how many it removed.
func (d *Datapath) PruneLinks() (int, error) {
	return d.unpinLinks(func(name string, info *link.Info) bool {
		return !strings.HasPrefix(name, "sock-") && info != nil && info.TCX() != nil && info.TCX().Ifindex == 0
	})
}

// DetachPinned removes the pinned links whose names start with one of prefixes ("sock-",
// "node-", "pod-", "tunnel-"), detaching their programs: a node leaving eBPF service mode
// drops them so the kernel's own path (and its netfilter) sees every packet. It returns how
// many it removed.
func (d *Datapath) DetachPinned(prefixes ...string) (int, error) {
	return d.unpinLinks(func(name string, _ *link.Info) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				return true
			}
		}
		return false
	})
}

// unpinLinks unpins the links under the link directory that match (info is nil when the kernel
// cannot describe the link). Unpinning the last reference and closing the handle detaches it.
func (d *Datapath) unpinLinks(match func(name string, info *link.Info) bool) (int, error) {
	entries, err := os.ReadDir(d.linkDir())
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read link pin dir: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range entries {
		path := filepath.Join(d.linkDir(), e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", path, err))
			continue
		}
		info, err := l.Info()
		if err != nil {
			info = nil
		}
		if match(e.Name(), info) {
			if err := l.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
			} else {
				n++
			}
		}
		l.Close()
	}
	return n, errors.Join(errs...)
}
