package daemonset

import (
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// expectationTTL bounds how long a DaemonSet waits for the informer to
// report its own writes: a create that the server accepted but whose watch
// event was lost must not freeze the DaemonSet forever.
const expectationTTL = 5 * time.Minute

// expectations records the pod creations and deletions a DaemonSet has
// asked for but not yet seen in the pod informer. While any are pending the
// lister's view is known to be stale, so the controller does not count pods
// again; otherwise a burst of creates would be repeated.
type expectations struct {
	clock clock.PassiveClock
	mu    sync.Mutex
	byKey map[string]*pending
}

type pending struct {
	adds    int
	deletes map[string]bool // pod keys we deleted and have not seen go
	since   time.Time
}

func newExpectations(c clock.PassiveClock) *expectations {
	return &expectations{clock: c, byKey: map[string]*pending{}}
}

// satisfied is true when nothing is pending for the DaemonSet or the
// pending record is too old to trust.
func (e *expectations) satisfied(key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.byKey[key]
	if !ok {
		return true
	}
	if p.adds <= 0 && len(p.deletes) == 0 {
		return true
	}
	return e.clock.Since(p.since) > expectationTTL
}

// creationObserved also serves for creates that failed: they will never
// produce an informer event.
func (e *expectations) creationObserved(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.byKey[key]; ok && p.adds > 0 {
		p.adds--
	}
}

// deletionObserved is keyed by pod so that seeing both the
// deletionTimestamp update and the final delete event counts once.
func (e *expectations) deletionObserved(key, podKey string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.byKey[key]; ok {
		delete(p.deletes, podKey)
	}
}

func (e *expectations) forget(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.byKey, key)
}

// expect records one sync's creations and deletions together, replacing
// whatever was pending (satisfied was true, or the record had expired).
func (e *expectations) expect(key string, adds int, podKeys []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := &pending{adds: adds, deletes: map[string]bool{}, since: e.clock.Now()}
	for _, k := range podKeys {
		p.deletes[k] = true
	}
	e.byKey[key] = p
}
