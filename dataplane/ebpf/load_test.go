package ebpf

import (
	"net/netip"
	"testing"
)

func TestLoadAndRestore(t *testing.T) {
	cfg := testConfig()
	cfg.PinDir = mountBPFFS(t) + "/node-a"
	d := newTestDatapath(t, cfg)

	web := Service{ServiceKey: ServiceKey{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: TCP}}
	np := Service{ServiceKey: ServiceKey{Port: 30080, Proto: TCP}, Algorithm: SourceHash}
	bes := []Backend{
		{Addr: netip.MustParseAddr("10.244.1.2"), Port: 8080},
		{Addr: netip.MustParseAddr("10.244.1.3"), Port: 8080, Terminating: true},
	}
	if err := d.UpsertService(web, bes); err != nil {
		t.Fatal(err)
	}
	if err := d.UpsertService(np, bes[:1]); err != nil {
		t.Fatal(err)
	}
	d.Close()

	// A restarted daemon finds its services in the pinned maps.
	d2 := newTestDatapath(t, cfg)
	if got := len(d2.ServiceKeys()); got != 2 {
		t.Fatalf("restored %d services, want 2", got)
	}
	st := d2.services[web.ServiceKey]
	if st == nil || len(st.active) != 1 || len(st.terminating) != 1 {
		t.Fatalf("restored web service wrong: %+v", st)
	}
	if got := len(d2.byID); got != 2 {
		t.Fatalf("restored %d backends, want 2", got)
	}
	// Re-syncing the same state writes nothing new and keeps IDs.
	id := st.id
	if err := d2.UpsertService(web, bes); err != nil {
		t.Fatal(err)
	}
	if d2.services[web.ServiceKey].id != id {
		t.Fatal("service ID changed on an identical upsert")
	}
	if err := d2.DeleteService(web.ServiceKey); err != nil {
		t.Fatal(err)
	}
	if err := d2.DeleteService(np.ServiceKey); err != nil {
		t.Fatal(err)
	}
	if len(d2.byID) != 0 {
		t.Fatalf("%d backends left after deleting every service", len(d2.byID))
	}
	var k svcKey
	var v svcVal
	if d2.sock.Services.Iterate().Next(&k, &v) {
		t.Fatal("services map not empty")
	}
}
