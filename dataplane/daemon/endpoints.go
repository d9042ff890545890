package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/capstan-net/capstan/cni"
	"github.com/capstan-net/capstan/dataplane/ebpf"
)

// endpointWatcher attaches the pod programs to the host side of every pod
// veth the CNI plugin reports in the endpoints directory, and lets go of
// those whose record disappeared. Polling a directory that the plugin
// writes atomically is enough: records change only on pod add and delete,
// and a restarted daemon finds every record again.
type endpointWatcher struct {
	dir      string
	netns    string
	dp       *ebpf.Datapath
	log      *slog.Logger
	interval time.Duration

	attached map[string]attachedEndpoint // by record key (container ID + ifname)
	// redirect fills the endpoint map, so packets for local pods go straight into their
	// netns; off, they take the stack's path.
	redirect bool
}

type attachedEndpoint struct {
	ifindex int
	att     *ebpf.Attachment
}

func newEndpointWatcher(dir, netns string, dp *ebpf.Datapath, log *slog.Logger) *endpointWatcher {
	return &endpointWatcher{dir: dir, netns: netns, dp: dp, log: log, interval: 500 * time.Millisecond,
		attached: map[string]attachedEndpoint{}, redirect: true}
}

func (w *endpointWatcher) run(ctx context.Context) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.scan()
		select {
		case <-ctx.Done():
			// Links stay pinned: pods keep their programs across a restart.
			for _, a := range w.attached {
				a.att.Release()
			}
			return
		case <-t.C:
		}
	}
}

// scan brings the attachments in line with the records.
func (w *endpointWatcher) scan() {
	eps, err := cni.ListEndpoints(w.dir)
	if err != nil {
		w.log.Debug("read endpoints", "err", err)
	}
	for key, ep := range eps {
		if a, ok := w.attached[key]; ok && a.ifindex == ep.HostIfIndex {
			continue
		}
		var att *ebpf.Attachment
		err := inNetns(w.netns, func() error {
			var err error
			att, err = w.dp.AttachPodPinned(ep.HostIfIndex)
			return err
		})
		if err != nil {
			// The veth may already be gone (pod deleted); try again next scan.
			w.log.Debug("attach pod programs", "endpoint", key, "ifindex", ep.HostIfIndex, "err", err)
			continue
		}
		if old, ok := w.attached[key]; ok {
			old.att.Close()
		}
		w.attached[key] = attachedEndpoint{ifindex: ep.HostIfIndex, att: att}
		w.log.Info("pod programs attached", "pod", ep.PodNamespace+"/"+ep.PodName, "dev", ep.HostIfName, "ips", ep.PodIPs)
	}
	if w.redirect {
		w.syncEndpoints(eps)
	}
	for key, a := range w.attached {
		if _, ok := eps[key]; ok {
			continue
		}
		// The record is gone with the pod; its veth (and so its tc links)
		// went with it. Unpin what is left.
		if err := a.att.Close(); err != nil {
			w.log.Debug("detach pod programs", "endpoint", key, "err", err)
		}
		delete(w.attached, key)
	}
}

// syncEndpoints makes the BPF endpoint map (local pod IP to host veth,
// for redirect_peer) equal to the records.
func (w *endpointWatcher) syncEndpoints(eps map[string]*cni.Endpoint) {
	var list []ebpf.Endpoint
	cookies := map[uint64]netip.Addr{}
	for _, ep := range eps {
		for _, ip := range ep.PodIPs {
			if ip.Is4() && ep.NetnsCookie != 0 {
				cookies[ep.NetnsCookie] = ip
			}
		}
		hostMAC, err1 := net.ParseMAC(ep.HostMAC)
		podMAC, err2 := net.ParseMAC(ep.PodMAC)
		if err1 != nil || err2 != nil {
			continue // a record without MACs cannot be redirected to
		}
		for _, ip := range ep.PodIPs {
			if ip.Is4() {
				list = append(list, ebpf.Endpoint{IP: ip, HostIfindex: ep.HostIfIndex, HostMAC: hostMAC, PodMAC: podMAC})
			}
		}
	}
	if err := w.dp.SetEndpoints(list); err != nil {
		w.log.Warn("sync endpoint map", "err", err)
	}
	if err := w.dp.SetPodNetns(cookies); err != nil {
		w.log.Warn("sync pod netns map", "err", err)
	}
}
