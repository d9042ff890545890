package registry_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-net/capstan/control/etcd"
	"github.com/capstan-net/capstan/control/registry"
)

func newAllocator(t *testing.T, cidr, ports string) *registry.Allocator {
	a, _ := newAllocatorClient(t, cidr, ports)
	return a
}

func newAllocatorClient(t *testing.T, cidr, ports string) (*registry.Allocator, *clientv3.Client) {
	t.Helper()
	cfg := etcd.Config{DataDir: t.TempDir()}
	if v := os.Getenv("CAPSTAN_TEST_ETCD"); v != "" {
		cfg.Endpoints = strings.Split(v, ",")
		cfg.Prefix = fmt.Sprintf("/alloc-test/%d", time.Now().UnixNano())
	}
	e, err := etcd.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	a, err := registry.NewAllocator(e.Client, cidr, ports)
	if err != nil {
		t.Fatal(err)
	}
	return a, e.Client
}

func TestAllocatorRejectsBadRanges(t *testing.T) {
	for _, c := range []struct{ cidr, ports string }{
		{"10.96.0.0", "30000-32767"},
		{"fd00::/64", "30000-32767"},
		{"10.96.0.0/16", "32767-30000"},
		{"10.96.0.0/16", "0-10"},
		{"10.96.0.0/16", "abc"},
	} {
		if _, err := registry.NewAllocator(nil, c.cidr, c.ports); err == nil {
			t.Errorf("NewAllocator(%q, %q) accepted a bad range", c.cidr, c.ports)
		}
	}
}

func TestAllocateConcurrentNoDuplicates(t *testing.T) {
	a := newAllocator(t, "10.100.0.0/24", "30000-30100")
	ctx := context.Background()
	const n = 100
	var mu sync.Mutex
	seenIP, seenPort := map[string]bool{}, map[int]bool{}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ip, err := a.AllocateIP(ctx, nil, fmt.Sprintf("ns/s%d", i))
			if err != nil {
				t.Error(err)
				return
			}
			port, err := a.AllocatePort(ctx, 0, fmt.Sprintf("ns/s%d", i))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seenIP[ip.String()] || seenPort[port] {
				t.Errorf("double allocation: %s %d", ip, port)
			}
			seenIP[ip.String()], seenPort[port] = true, true
		}(i)
	}
	wg.Wait()
	if len(seenIP) != n || len(seenPort) != n {
		t.Fatalf("got %d IPs and %d ports, want %d each", len(seenIP), len(seenPort), n)
	}
	if seenIP["10.100.0.1"] {
		t.Error("10.100.0.1 is reserved for the kubernetes Service")
	}
}

func TestAllocateSpecificAndRelease(t *testing.T) {
	a := newAllocator(t, "10.100.0.0/28", "30000-30001")
	ctx := context.Background()
	want := net.ParseIP("10.100.0.5")
	if _, err := a.AllocateIP(ctx, want, "ns/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocateIP(ctx, want, "ns/b"); err == nil || !strings.Contains(err.Error(), "already allocated") {
		t.Fatalf("taken IP: %v", err)
	}
	if _, err := a.AllocateIP(ctx, net.ParseIP("10.101.0.5"), "ns/b"); err == nil || !strings.Contains(err.Error(), "not in the valid range") {
		t.Fatalf("out-of-range IP: %v", err)
	}
	if _, err := a.AllocateIP(ctx, net.ParseIP("10.100.0.15"), "ns/b"); err == nil {
		t.Fatal("broadcast address was allocated")
	}
	a.ReleaseIP(ctx, "10.100.0.5")
	if _, err := a.AllocateIP(ctx, want, "ns/b"); err != nil {
		t.Fatalf("released IP not reusable: %v", err)
	}
	if _, err := a.AllocatePort(ctx, 29999, "ns/a"); err == nil {
		t.Fatal("out-of-range port was allocated")
	}
	for i := 0; i < 2; i++ {
		if _, err := a.AllocatePort(ctx, 0, fmt.Sprintf("ns/p%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.AllocatePort(ctx, 0, "ns/p3"); err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("exhausted port range: %v", err)
	}
}

func TestAllocationsSurviveNewAllocator(t *testing.T) {
	a, client := newAllocatorClient(t, "10.100.0.0/28", "30000-30010")
	ctx := context.Background()
	ip, err := a.AllocateIP(ctx, nil, "ns/a")
	if err != nil {
		t.Fatal(err)
	}
	// A second allocator on the same etcd (another server, or a restart)
	// sees the allocation.
	b, err := registry.NewAllocator(client, "10.100.0.0/28", "30000-30010")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AllocateIP(ctx, ip, "ns/b"); err == nil {
		t.Fatalf("%s allocated twice across allocators", ip)
	}
}
