package storage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
)

// InitialEventsAnnotation marks the bookmark that ends the initial events of
// a streaming list (sendInitialEvents=true).
const InitialEventsAnnotation = "k8s.io/initial-events-end"

// WatchOptions are the watch parameters of the Kubernetes API.
type WatchOptions struct {
	ResourceVersion   string
	Match             metav1.ResourceVersionMatch
	SendInitialEvents *bool
	AllowBookmarks    bool
	Predicate         Predicate
	// BookmarkInterval is how often progress is requested from etcd; each
	// answer becomes a BOOKMARK event. Zero means one minute.
	BookmarkInterval time.Duration
}

// Watch streams changes under prefix. With no resourceVersion (or "0"), or
// with SendInitialEvents, it first sends the current objects as ADDED.
func (s *Store) Watch(ctx context.Context, prefix string, opts WatchOptions, newObj func() runtime.Object) (watch.Interface, error) {
	rev, err := ParseResourceVersion(opts.ResourceVersion)
	if err != nil {
		return nil, err
	}
	initial := opts.ResourceVersion == "" || opts.ResourceVersion == "0"
	if opts.SendInitialEvents != nil {
		initial = *opts.SendInitialEvents
	}
	var items []runtime.Object
	if initial {
		lo := ListOptions{Predicate: opts.Predicate}
		if rev > 0 {
			lo.ResourceVersion = opts.ResourceVersion
			lo.Match = metav1.ResourceVersionMatchNotOlderThan
		}
		res, err := s.List(ctx, prefix, lo, newObj)
		if err != nil {
			return nil, err
		}
		items, rev = res.Items, res.Revision
	} else if rev > 0 {
		// Fail fast, before the HTTP response starts, when rev is compacted.
		if _, err := s.client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithCountOnly()); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return nil, newErr(ErrGone, prefix, "too old resource version: %d", rev)
			}
			if errors.Is(err, rpctypes.ErrFutureRev) {
				return nil, newErr(ErrTooLarge, prefix, "too large resource version: %d", rev)
			}
			return nil, fmt.Errorf("watch %s: %w", prefix, err)
		}
	} else {
		cur, err := s.CurrentRevision(ctx)
		if err != nil {
			return nil, err
		}
		rev = cur
	}

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	w := &watcher{
		store:  s,
		opts:   opts,
		newObj: newObj,
		result: make(chan watch.Event, 100),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go w.run(wctx, prefix, rev, items, initial && opts.SendInitialEvents != nil && *opts.SendInitialEvents)
	return w, nil
}

type watcher struct {
	store    *Store
	opts     WatchOptions
	newObj   func() runtime.Object
	result   chan watch.Event
	cancel   context.CancelFunc
	done     chan struct{}
	stopOnce sync.Once
}

func (w *watcher) ResultChan() <-chan watch.Event { return w.result }

func (w *watcher) Stop() {
	w.stopOnce.Do(func() {
		w.cancel()
	})
}

func (w *watcher) send(ctx context.Context, ev watch.Event) bool {
	select {
	case w.result <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *watcher) bookmark(rev int64, initialEnd bool) watch.Event {
	obj := w.newObj()
	m, err := meta.Accessor(obj)
	if err == nil {
		_ = setRV(obj, rev)
		if initialEnd {
			m.SetAnnotations(map[string]string{InitialEventsAnnotation: "true"})
		}
	}
	return watch.Event{Type: watch.Bookmark, Object: obj}
}

func (w *watcher) fail(ctx context.Context, code int32, reason metav1.StatusReason, msg string) {
	w.send(ctx, watch.Event{Type: watch.Error, Object: &metav1.Status{
		Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg,
	}})
}

func (w *watcher) run(ctx context.Context, prefix string, rev int64, initial []runtime.Object, streamingList bool) {
	defer close(w.result)
	defer w.cancel()
	for _, obj := range initial {
		if !w.send(ctx, watch.Event{Type: watch.Added, Object: obj}) {
			return
		}
	}
	if streamingList {
		if !w.send(ctx, w.bookmark(rev, true)) {
			return
		}
	}
	if sub := w.store.subscribe(prefix, rev, w.opts, w.newObj); sub != nil {
		w.forward(ctx, sub)
		return
	}
	// Start at rev, not rev+1, and drop what is not newer: etcd sends no
	// progress notifications to a watch that starts in the future.
	wch := w.store.client.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	interval := w.opts.BookmarkInterval
	if interval <= 0 {
		interval = time.Minute
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if w.opts.AllowBookmarks {
				// The answer arrives on wch as a progress notification.
				_ = w.store.client.RequestProgress(ctx)
			}
		case resp, ok := <-wch:
			if !ok {
				return
			}
			if resp.CompactRevision != 0 {
				w.fail(ctx, http.StatusGone, metav1.StatusReasonExpired,
					fmt.Sprintf("too old resource version: %d (%d)", rev, resp.CompactRevision))
				return
			}
			if err := resp.Err(); err != nil {
				w.fail(ctx, http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
				return
			}
			if resp.IsProgressNotify() {
				if w.opts.AllowBookmarks && resp.Header.Revision > 0 {
					if !w.send(ctx, w.bookmark(resp.Header.Revision, false)) {
						return
					}
				}
				continue
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision <= rev {
					continue
				}
				out, ok, err := w.translate(ev)
				if err != nil {
					w.fail(ctx, http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
					return
				}
				if ok && !w.send(ctx, out) {
					return
				}
			}
		}
	}
}

// translate turns an etcd event into a watch event as seen through the
// predicate: an object that starts or stops matching is ADDED or DELETED.
func (w *watcher) translate(ev *clientv3.Event) (watch.Event, bool, error) {
	pred := w.opts.Predicate
	if ev.Type == mvccpb.DELETE {
		if ev.PrevKv == nil {
			return watch.Event{}, false, nil
		}
		obj, err := w.store.decode(ev.PrevKv.Value, ev.Kv.ModRevision, w.newObj())
		if err != nil {
			return watch.Event{}, false, err
		}
		ok, err := pred.Matches(obj)
		return watch.Event{Type: watch.Deleted, Object: obj}, ok, err
	}
	cur, err := w.store.decode(ev.Kv.Value, ev.Kv.ModRevision, w.newObj())
	if err != nil {
		return watch.Event{}, false, err
	}
	curOK, err := pred.Matches(cur)
	if err != nil {
		return watch.Event{}, false, err
	}
	if ev.IsCreate() || ev.PrevKv == nil {
		return watch.Event{Type: watch.Added, Object: cur}, curOK, nil
	}
	oldOK := true
	if !pred.Empty() {
		old, err := w.store.decode(ev.PrevKv.Value, ev.PrevKv.ModRevision, w.newObj())
		if err != nil {
			return watch.Event{}, false, err
		}
		if oldOK, err = pred.Matches(old); err != nil {
			return watch.Event{}, false, err
		}
	}
	switch {
	case curOK && oldOK:
		return watch.Event{Type: watch.Modified, Object: cur}, true, nil
	case curOK:
		return watch.Event{Type: watch.Added, Object: cur}, true, nil
	case oldOK:
		return watch.Event{Type: watch.Deleted, Object: cur}, true, nil
	}
	return watch.Event{}, false, nil
}

// forward relays a shared-watch subscription until it or ctx ends.
func (w *watcher) forward(ctx context.Context, sub *hubSub) {
	defer sub.hub.remove(sub)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.ch:
			if !ok || !w.send(ctx, ev) {
				return
			}
		}
	}
}
