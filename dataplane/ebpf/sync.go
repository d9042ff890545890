package ebpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"

	"github.com/capstan-net/capstan/dataplane"
)

// Syncer is the eBPF dataplane.Backend: it makes a Datapath's maps hold a State.
type Syncer struct {
	d   *Datapath
	log *slog.Logger
}

var _ dataplane.Backend = (*Syncer)(nil)

// NewSyncer returns a Syncer writing into d.
func NewSyncer(d *Datapath, log *slog.Logger) *Syncer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Syncer{d: d, log: log}
}

type frontend struct {
	svc      Service
	backends []Backend
	owner    dataplane.ServicePortName
}

// frontends turns a State into the frontends this backend programs: one per IPv4 ClusterIP,
// external IP and load-balancer IP, and one NodePort, each with its backends. When two service
// ports claim one frontend the first by name wins, so the outcome does not depend on order.
// Conflicts are returned, not fatal: the rest of the State still applies.
func frontends(st *dataplane.State) (map[ServiceKey]frontend, []error) {
	out := make(map[ServiceKey]frontend)
	var conflicts []error
	add := func(sp *dataplane.ServicePort, key ServiceKey, local bool, ts []dataplane.Target) {
		if prev, ok := out[key]; ok {
			conflicts = append(conflicts, fmt.Errorf("frontend %s of %s already belongs to %s", key, sp.Name, prev.owner))
			return
		}
		algo, err := ParseAlgorithm(sp.Algorithm)
		if err != nil {
			algo = Random // the tracker only passes valid names; never fail a whole sync on one
		}
		f := frontend{
			svc:   Service{ServiceKey: key, Algorithm: algo, ExternalLocal: local, AffinityTimeout: sp.AffinityTimeout},
			owner: sp.Name,
		}
		for _, t := range ts {
			if t.Addr.Is4() {
				f.backends = append(f.backends, Backend{Addr: t.Addr, Port: t.Port, Terminating: !t.Usable})
			}
		}
		out[key] = f
	}
	// external adds an external frontend; a Local one gets its internal entry too.
	external := func(sp *dataplane.ServicePort, key ServiceKey) {
		add(sp, key, sp.ExternalPolicyLocal, sp.ExternalTargets)
		if sp.ExternalPolicyLocal {
			key.Internal = true
			add(sp, key, false, sp.ClusterTargets)
		}
	}
	for _, sp := range st.Services {
		proto, ok := protocol(sp.Protocol)
		if !ok {
			continue // SCTP: not supported by the programs
		}
		for _, ip := range sp.ClusterIPs {
			if ip.Is4() {
				add(sp, ServiceKey{Addr: ip, Port: sp.Port, Proto: proto}, false, sp.ClusterTargets)
			}
		}
		for _, ip := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
			if ip.Is4() {
				external(sp, ServiceKey{Addr: ip, Port: sp.Port, Proto: proto})
			}
		}
		if sp.NodePort != 0 {
			external(sp, ServiceKey{Port: sp.NodePort, Proto: proto})
		}
	}
	return out, conflicts
}

func protocol(p v1.Protocol) (Protocol, bool) {
	switch p {
	case v1.ProtocolTCP:
		return TCP, true
	case v1.ProtocolUDP:
		return UDP, true
	}
	return 0, false
}

// Sync makes the maps hold st: this node's and the other nodes' addresses, then every wanted frontend (the Datapath
// writes only what differs), then deletes frontends st no longer has. It never reloads a
// program. It goes on past a failing frontend and returns all errors together, so one bad
// service cannot hold the others back.
func (s *Syncer) Sync(ctx context.Context, st *dataplane.State) error {
	var errs []error
	var addrs []netip.Addr
	for _, a := range st.NodeAddrs {
		if a.Is4() {
			addrs = append(addrs, a)
		}
	}
	if err := s.d.SetNodeAddrs(addrs); err != nil {
		errs = append(errs, err)
	}
	peers := make([]netip.Addr, 0, len(st.Routes))
	for _, r := range st.Routes {
		peers = append(peers, r.NodeIP)
	}
	if err := s.d.SetPeerNodes(peers); err != nil {
		errs = append(errs, err)
	}

	want, conflicts := frontends(st)
	for _, c := range conflicts {
		s.log.Warn("service frontend conflict", "err", c)
	}
	// Sorted, so failures and logs come in the same order every time.
	keys := make([]ServiceKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		f := want[k]
		if err := s.d.UpsertService(f.svc, f.backends); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.owner, err))
		}
	}
	for _, k := range s.d.ServiceKeys() {
		if _, ok := want[k]; ok {
			continue
		}
		if err := s.d.DeleteService(k); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func compareKeys(a, b ServiceKey) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return int(a.Port) - int(b.Port)
	}
	if a.Proto != b.Proto {
		return int(a.Proto) - int(b.Proto)
	}
	// A Local frontend's internal entry right after it.
	return cmpBool(a.Internal, b.Internal)
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
