package daemonset

import (
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Bounds of the delay before a failed daemon pod is replaced. A pod that
// fails at once would otherwise make a tight delete/create loop on its node.
const (
	failedBackoffInitial = time.Second
	failedBackoffMax     = 15 * time.Minute
)

// failedBackoff remembers, per DaemonSet and node, when the next failed pod
// may be replaced and how long the wait after that will be.
type failedBackoff struct {
	clock clock.PassiveClock
	mu    sync.Mutex
	byKey map[string]*backoffEntry
}

type backoffEntry struct {
	delay time.Duration
	until time.Time
}

func newFailedBackoff(c clock.PassiveClock) *failedBackoff {
	return &failedBackoff{clock: c, byKey: map[string]*backoffEntry{}}
}

// wait returns how long replacing a failed pod must still wait; zero means
// go ahead, and the next failure then waits twice as long. A node quiet for
// longer than the maximum delay starts again from the initial delay.
func (b *failedBackoff) wait(key string) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	e, ok := b.byKey[key]
	if ok && now.Before(e.until) {
		return e.until.Sub(now)
	}
	if !ok || now.Sub(e.until) > 2*failedBackoffMax {
		e = &backoffEntry{delay: failedBackoffInitial}
		b.byKey[key] = e
	} else {
		e.delay = min(2*e.delay, failedBackoffMax)
	}
	e.until = now.Add(e.delay)
	return 0
}

// forget drops a DaemonSet's entries when it is deleted.
func (b *failedBackoff) forget(prefix string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k := range b.byKey {
		if len(k) > len(prefix) && k[:len(prefix)] == prefix && k[len(prefix)] == '|' {
			delete(b.byKey, k)
		}
	}
}
