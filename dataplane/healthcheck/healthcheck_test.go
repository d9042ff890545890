package healthcheck

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/dataplane"
)

// loopbackListen opens each health-check port on a free loopback port and remembers where.
type loopbackListen struct {
	mu    sync.Mutex
	addrs map[uint16]string
}

func (l *loopbackListen) listen(p uint16) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.addrs[p] = ln.Addr().String()
	l.mu.Unlock()
	return ln, nil
}

func (l *loopbackListen) get(t *testing.T, p uint16) (int, map[string]any) {
	t.Helper()
	l.mu.Lock()
	addr := l.addrs[p]
	l.mu.Unlock()
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func hcState(local ...string) *dataplane.State {
	name := types.NamespacedName{Namespace: "default", Name: "web"}
	sp := func(port string) *dataplane.ServicePort {
		s := &dataplane.ServicePort{
			Name:                dataplane.ServicePortName{NamespacedName: name, Port: port, Protocol: v1.ProtocolTCP},
			HealthCheckNodePort: 31000, ExternalPolicyLocal: true,
		}
		for _, a := range local {
			s.ExternalTargets = append(s.ExternalTargets, dataplane.Target{Addr: netip.MustParseAddr(a), Port: 8080, Usable: true, Ready: true})
		}
		// A terminating endpoint does not count, even one still taking traffic because no
		// ready one is left.
		s.ExternalTargets = append(s.ExternalTargets, dataplane.Target{Addr: netip.MustParseAddr("10.244.0.99"), Port: 8080, Usable: len(local) == 0})
		return s
	}
	return &dataplane.State{Services: []*dataplane.ServicePort{sp("http"), sp("https")}}
}

func TestHealthCheckFollowsLocalEndpoints(t *testing.T) {
	l := &loopbackListen{addrs: make(map[uint16]string)}
	s := New(Config{Listen: l.listen})
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()

	if err := s.Sync(ctx, hcState("10.244.0.2", "10.244.0.3")); err != nil {
		t.Fatal(err)
	}
	code, body := l.get(t, 31000)
	if code != http.StatusOK || body["localEndpoints"] != float64(2) {
		t.Fatalf("with two local endpoints: %d %v", code, body)
	}
	if svc := body["service"].(map[string]any); svc["namespace"] != "default" || svc["name"] != "web" {
		t.Fatalf("service in body: %v", svc)
	}
	first := l.addrs[31000]

	if err := s.Sync(ctx, hcState()); err != nil {
		t.Fatal(err)
	}
	if l.addrs[31000] != first {
		t.Fatal("port reopened for a data change")
	}
	if code, body = l.get(t, 31000); code != http.StatusServiceUnavailable || body["localEndpoints"] != float64(0) {
		t.Fatalf("without local endpoints: %d %v", code, body)
	}

	// The service goes: its port closes.
	if err := s.Sync(ctx, &dataplane.State{}); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + first + "/"); err == nil {
		t.Fatal("health check port still open after its service went")
	}
}
