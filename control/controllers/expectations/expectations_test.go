package expectations

import (
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestExpectations(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := New(clk)
	if !e.Satisfied("ns/a") {
		t.Fatal("nothing expected yet: want satisfied")
	}
	e.Expect("ns/a", 2, []string{"ns/p1"})
	e.CreationObserved("ns/a")
	e.DeletionObserved("ns/a", "ns/p1")
	e.DeletionObserved("ns/a", "ns/p1") // the final delete after the deletionTimestamp update
	if e.Satisfied("ns/a") {
		t.Fatal("one creation still pending: want unsatisfied")
	}
	e.CreationObserved("ns/a")
	if !e.Satisfied("ns/a") {
		t.Fatal("everything observed: want satisfied")
	}
	e.ExpectCreations("ns/b", 1)
	if e.Satisfied("ns/b") {
		t.Fatal("creation pending: want unsatisfied")
	}
	clk.SetTime(clk.Now().Add(TTL + time.Second))
	if !e.Satisfied("ns/b") {
		t.Fatal("a lost event must not block the owner past the TTL")
	}
	e.ExpectDeletions("ns/c", []string{"ns/p2"})
	e.Forget("ns/c")
	if !e.Satisfied("ns/c") {
		t.Fatal("forgotten owner: want satisfied")
	}
}
