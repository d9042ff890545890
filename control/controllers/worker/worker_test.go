package worker_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/capstan-net/capstan/control/controllers/worker"
)

// A failing key is retried until it succeeds, then forgotten.
func TestRetriesThenForgets(t *testing.T) {
	q := workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Millisecond, 10*time.Millisecond))
	var mu sync.Mutex
	calls := map[string]int{}
	done := make(chan struct{})
	syncKey := func(ctx context.Context, key string) error {
		mu.Lock()
		defer mu.Unlock()
		calls[key]++
		if key == "flaky" && calls[key] < 3 {
			return errors.New("not yet")
		}
		if calls["flaky"] == 3 && calls["fine"] == 1 {
			close(done)
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q.Add("fine")
	q.Add("flaky")
	go worker.Run(ctx, q, 2, []cache.InformerSynced{func() bool { return true }}, syncKey, slog.New(slog.NewTextHandler(io.Discard, nil)), "thing")
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("calls = %v, want flaky retried to 3 and fine once", calls)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if calls["fine"] != 1 || calls["flaky"] != 3 {
		t.Fatalf("calls = %v after success; a key was synced again", calls)
	}
	if q.NumRequeues("flaky") != 0 {
		t.Fatal("succeeded key not forgotten by the rate limiter")
	}
}
