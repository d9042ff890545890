package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	v1 "k8s.io/api/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/capstan-net/capstan/dataplane"
	"github.com/capstan-net/capstan/dataplane/ebpf"
	"github.com/capstan-net/capstan/dataplane/iptables"
)

// Service modes: who implements Services on the node. Pod routing is the daemon's in all of
// them, so comparing modes compares only the service path.
const (
	// ModeEBPF: socket and tc programs (the default).
	ModeEBPF = "ebpf"
	// ModeIPTables: kube-proxy-style nat rules, for comparison. The pod and node tc programs
	// are policy-only ones that neither translate nor redirect, so every packet crosses the
	// stack and its netfilter, as with Cilium's legacy host routing beside kube-proxy.
	ModeIPTables = "iptables"
	// ModeNone: Services are an external kube-proxy's; the daemon keeps routing, masquerade
	// and NetworkPolicy (policy-only programs, as in ModeIPTables).
	ModeNone = "none"
)

func validMode(m string) error {
	switch m {
	case ModeEBPF, ModeIPTables, ModeNone:
		return nil
	}
	return fmt.Errorf("mode %q: want %s, %s or %s", m, ModeEBPF, ModeIPTables, ModeNone)
}

// leaveEBPFMode removes what eBPF service mode leaves behind (pinned socket, node and pod
// links, service and endpoint map entries), so a node switched to another mode runs none of it.
func leaveEBPFMode(ctx context.Context, dp *ebpf.Datapath, node string, log *slog.Logger) error {
	n, err := dp.DetachPinned("sock-", "node-", "pod-")
	if err != nil {
		return fmt.Errorf("detach eBPF service programs: %w", err)
	}
	if n > 0 {
		log.Info("detached eBPF service programs for the new mode", "links", n)
	}
	if err := ebpf.NewSyncer(dp, log).Sync(ctx, &dataplane.State{NodeName: node}); err != nil {
		return fmt.Errorf("clear eBPF service maps: %w", err)
	}
	if err := dp.SetEndpoints(nil); err != nil {
		return fmt.Errorf("clear eBPF endpoint map: %w", err)
	}
	return nil
}

// withoutServices syncs a backend with the State's Services left out: in mode none the
// iptables backend only masquerades, Services being kube-proxy's.
type withoutServices struct{ b dataplane.Backend }

func (w withoutServices) Sync(ctx context.Context, st *dataplane.State) error {
	cp := *st
	cp.Services = nil
	return w.b.Sync(ctx, &cp)
}

// algorithmWarner records one Warning event per Service whose annotation asks for an
// algorithm the iptables mode cannot express; the backend falls back to random for it.
type algorithmWarner struct {
	services corelisters.ServiceLister
	recorder record.EventRecorder

	mu     sync.Mutex
	warned map[string]string // namespace/name -> algorithm warned about
}

func newAlgorithmWarner(services corelisters.ServiceLister, recorder record.EventRecorder) *algorithmWarner {
	return &algorithmWarner{services: services, recorder: recorder, warned: map[string]string{}}
}

func (a *algorithmWarner) Sync(_ context.Context, st *dataplane.State) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[string]bool{}
	for _, sp := range st.Services {
		if iptables.Supported(sp.Algorithm) {
			continue
		}
		key := sp.Name.NamespacedName.String()
		seen[key] = true
		if a.warned[key] == sp.Algorithm {
			continue
		}
		svc, err := a.services.Services(sp.Name.Namespace).Get(sp.Name.Name)
		if err != nil {
			continue // gone already
		}
		a.warned[key] = sp.Algorithm
		a.recorder.Eventf(svc, v1.EventTypeWarning, "AlgorithmUnsupported",
			"load-balancing algorithm %q cannot be expressed in iptables mode; using random", sp.Algorithm)
	}
	for key := range a.warned {
		if !seen[key] {
			delete(a.warned, key)
		}
	}
	return nil
}
