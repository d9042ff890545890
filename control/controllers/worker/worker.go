// Package worker runs a controller's rate-limited workqueue: it waits for
// the informer caches, then runs workers that sync one key at a time,
// retrying a failed key with back-off and forgetting one that succeeded.
package worker

import (
	"context"
	"log/slog"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// SyncFunc reconciles one key.
type SyncFunc func(ctx context.Context, key string) error

// Run processes queue with workers goroutines until ctx ends, then shuts
// the queue down. what names the object kind in log lines.
func Run(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], workers int, synced []cache.InformerSynced, sync SyncFunc, log *slog.Logger, what string) {
	defer queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return
	}
	for i := 0; i < workers; i++ {
		go func() {
			for next(ctx, queue, sync, log, what) {
			}
		}()
	}
	<-ctx.Done()
}

func next(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], sync SyncFunc, log *slog.Logger, what string) bool {
	key, quit := queue.Get()
	if quit {
		return false
	}
	defer queue.Done(key)
	if err := sync(ctx, key); err != nil {
		// A conflict only means the cache was behind; the retry reads
		// fresh state, so it is not worth a warning.
		level := slog.LevelWarn
		if apierrors.IsConflict(err) {
			level = slog.LevelDebug
		}
		log.Log(ctx, level, "sync "+what, what, key, "err", err)
		queue.AddRateLimited(key)
		return true
	}
	queue.Forget(key)
	return true
}
