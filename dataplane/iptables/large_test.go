package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/capstan-net/capstan/dataplane"
	"github.com/capstan-net/capstan/internal/netnstest"
)

// largeState has n service ports with two endpoints each and a NodePort on every tenth.
func largeState(n int) *dataplane.State {
	st := &dataplane.State{NodeName: "node-a", NodeAddrs: []netip.Addr{nodeIP}}
	for i := range n {
		sp := tcpService(fmt.Sprintf("svc-%05d", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1))
		sp.Name.Protocol = v1.ProtocolTCP
		for j := range 2 {
			sp.ClusterTargets = append(sp.ClusterTargets, dataplane.Target{
				Addr: netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(i%250 + 1)}), Port: uint16(8080 + j), Usable: true})
		}
		sp.ExternalTargets = sp.ClusterTargets
		if i%10 == 0 {
			sp.NodePort = uint16(30000 + i/10)
		}
		st.Services = append(st.Services, sp)
	}
	return st
}

// TestSyncLarge programs 10,000 service ports into a namespace: the size the brief of this
// backend names, which must sync in seconds.
func TestSyncLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: 10,000 services")
	}
	t.Parallel()
	node := netnstest.New(t, "large")
	cfg := Config{Netns: node.Path(), ClusterCIDR: testClusterCIDR}
	b, err := New(cfg)
	must(t, "new", err)
	ctx := context.Background()
	st := largeState(10000)

	for i, what := range []string{"first sync", "resync"} {
		start := time.Now()
		must(t, what, b.Sync(ctx, st))
		took := time.Since(start)
		s := b.Stats()
		t.Logf("%s: %d chains, %d rules, %d KiB in %s", what, s.Chains, s.Rules, s.Bytes>>10, took)
		if limit := 30 * time.Second; took > limit { // generous: the machine may be busy
			t.Errorf("%s took %s", what, took)
		}
		if i == 0 {
			if ours := countPrefix(saveRules(t, node), " -A "+chainPrefix); ours != s.Rules {
				t.Errorf("RuleCount %d, kernel holds %d", s.Rules, ours)
			}
		}
	}
	start := time.Now()
	must(t, "cleanup", Cleanup(ctx, cfg))
	t.Logf("cleanup in %s", time.Since(start))
	if n := countPrefix(saveRules(t, node), chainPrefix); n != 0 {
		t.Errorf("%d lines of ours left after cleanup", n)
	}
}

func BenchmarkBuild(b *testing.B) {
	st := largeState(10000)
	in := buildInput{st: st, clusterCIDR: testClusterCIDR}
	for b.Loop() {
		build(in)
	}
}
