// Package expectations records the pod creations and deletions a controller
// (ReplicaSet, DaemonSet) has asked for but not yet seen in its pod informer.
// While any are pending the lister's view is known to be stale, so the
// controller does not count pods again; otherwise a burst of creates would be
// repeated.
package expectations

import (
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// TTL bounds how long a controller waits for the informer to report its own
// writes: a create that the server accepted but whose watch event was lost
// must not freeze the owner forever.
const TTL = 5 * time.Minute

// Expectations is keyed by the owner (namespace/name).
type Expectations struct {
	clock clock.PassiveClock
	mu    sync.Mutex
	byKey map[string]*pending
}

type pending struct {
	adds    int
	deletes map[string]bool // pod keys we deleted and have not seen go
	since   time.Time
}

// New returns empty expectations timed by c.
func New(c clock.PassiveClock) *Expectations {
	return &Expectations{clock: c, byKey: map[string]*pending{}}
}

// Satisfied is true when nothing is pending for the owner or the pending
// record is too old to trust.
func (e *Expectations) Satisfied(key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.byKey[key]
	if !ok {
		return true
	}
	if p.adds <= 0 && len(p.deletes) == 0 {
		return true
	}
	return e.clock.Since(p.since) > TTL
}

// Expect records one sync's creations and deletions together, replacing
// whatever was pending (Satisfied was true, or the record had expired).
func (e *Expectations) Expect(key string, adds int, podKeys []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := &pending{adds: adds, deletes: map[string]bool{}, since: e.clock.Now()}
	for _, k := range podKeys {
		p.deletes[k] = true
	}
	e.byKey[key] = p
}

// ExpectCreations is Expect with creations only.
func (e *Expectations) ExpectCreations(key string, n int) { e.Expect(key, n, nil) }

// ExpectDeletions is Expect with deletions only.
func (e *Expectations) ExpectDeletions(key string, podKeys []string) { e.Expect(key, 0, podKeys) }

// CreationObserved also serves for creates that failed: they will never
// produce an informer event.
func (e *Expectations) CreationObserved(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.byKey[key]; ok && p.adds > 0 {
		p.adds--
	}
}

// DeletionObserved is keyed by pod so that seeing both the
// deletionTimestamp update and the final delete event counts once.
func (e *Expectations) DeletionObserved(key, podKey string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.byKey[key]; ok {
		delete(p.deletes, podKey)
	}
}

// Forget drops the owner's record (it was deleted).
func (e *Expectations) Forget(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.byKey, key)
}
