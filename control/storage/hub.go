package storage

import (
	"context"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
)

// hub shares one etcd watch per resource among all API watches of it, so
// each change is decoded once instead of once per watcher (kube-apiserver's
// watch cache plays this part). It keeps a window of recent events so a
// watch may start a little in the past; older starts read etcd directly.
type hub struct {
	store  *Store
	prefix string
	newObj func() runtime.Object

	mu      sync.Mutex
	ring    []*hubEvent
	covered int64 // events after this revision are all in ring or still to come
	latest  int64
	subs    map[*hubSub]struct{}
	dead    bool
}

type hubEvent struct {
	key     string
	rev     int64
	deleted bool
	created bool
	cur     runtime.Object // for a delete, the last state
	prevRaw []byte
	prevRev int64

	once sync.Once
	prev runtime.Object
}

// previous decodes the prior state once, only when a selector needs it.
func (e *hubEvent) previous(h *hub) runtime.Object {
	e.once.Do(func() {
		if e.prevRaw != nil {
			e.prev, _ = h.store.decode(e.prevRaw, e.prevRev, h.newObj())
		}
	})
	return e.prev
}

type hubSub struct {
	hub      *hub
	prefix   string
	from     int64
	pred     Predicate
	bookmark bool
	ch       chan watch.Event
	closed   bool
}

const (
	hubWindow    = 8192
	hubSubBuffer = 4096
)

func resourcePrefix(prefix string) string {
	// "/registry/<resource>/..." -> "/registry/<resource>/"
	parts := strings.SplitN(strings.TrimPrefix(prefix, "/"), "/", 3)
	if len(parts) < 2 {
		return prefix
	}
	return "/" + parts[0] + "/" + parts[1] + "/"
}

// subscribe joins the hub of prefix's resource at revision from, or
// returns nil when the hub cannot serve that start.
func (s *Store) subscribe(prefix string, from int64, opts WatchOptions, newObj func() runtime.Object) *hubSub {
	rp := resourcePrefix(prefix)
	s.hubMu.Lock()
	h := s.hubs[rp]
	if h == nil || h.isDead() {
		// The hub starts where its first watcher starts, so that watcher
		// needs no catch-up; if that revision is compacted the hub ends and
		// its watchers' clients relist.
		h = &hub{store: s, prefix: rp, newObj: newObj, covered: from, latest: from, subs: map[*hubSub]struct{}{}}
		if s.hubs == nil {
			s.hubs = map[string]*hub{}
		}
		s.hubs[rp] = h
		go h.run(opts.BookmarkInterval)
	}
	s.hubMu.Unlock()
	return h.add(prefix, from, opts)
}

func (h *hub) isDead() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dead
}

func (h *hub) add(prefix string, from int64, opts WatchOptions) *hubSub {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dead || from < h.covered {
		return nil
	}
	sub := &hubSub{hub: h, prefix: prefix, from: from, pred: opts.Predicate, bookmark: opts.AllowBookmarks,
		ch: make(chan watch.Event, hubSubBuffer)}
	for _, ev := range h.ring {
		if ev.rev > from {
			h.deliver(sub, ev)
		}
	}
	if !sub.closed {
		h.subs[sub] = struct{}{}
	}
	return sub
}

func (h *hub) remove(sub *hubSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[sub]; ok {
		delete(h.subs, sub)
		sub.closed = true
		close(sub.ch)
	}
}

// deliver translates ev for one subscriber; h.mu is held. A subscriber too
// slow to keep up is closed, and its client restarts from its last version.
func (h *hub) deliver(sub *hubSub, ev *hubEvent) {
	if sub.closed || ev.rev <= sub.from || !strings.HasPrefix(ev.key, sub.prefix) {
		return
	}
	out, ok := h.translate(sub.pred, ev)
	if !ok {
		return
	}
	select {
	case sub.ch <- out:
	default:
		delete(h.subs, sub)
		sub.closed = true
		close(sub.ch)
	}
}

func (h *hub) translate(pred Predicate, ev *hubEvent) (watch.Event, bool) {
	curOK, err := pred.Matches(ev.cur)
	if err != nil {
		return watch.Event{}, false
	}
	if ev.deleted {
		return watch.Event{Type: watch.Deleted, Object: ev.cur.DeepCopyObject()}, curOK
	}
	if ev.created {
		return watch.Event{Type: watch.Added, Object: ev.cur.DeepCopyObject()}, curOK
	}
	oldOK := true
	if !pred.Empty() {
		prev := ev.previous(h)
		if prev == nil {
			oldOK = false
		} else if oldOK, err = pred.Matches(prev); err != nil {
			return watch.Event{}, false
		}
	}
	switch {
	case curOK && oldOK:
		return watch.Event{Type: watch.Modified, Object: ev.cur.DeepCopyObject()}, true
	case curOK:
		return watch.Event{Type: watch.Added, Object: ev.cur.DeepCopyObject()}, true
	case oldOK:
		return watch.Event{Type: watch.Deleted, Object: ev.cur.DeepCopyObject()}, true
	}
	return watch.Event{}, false
}

func (h *hub) run(interval time.Duration) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	defer cancel()
	defer h.shutdown()
	if interval <= 0 {
		interval = time.Minute
	}
	h.mu.Lock()
	start := h.covered
	h.mu.Unlock()
	wch := h.store.client.Watch(ctx, h.prefix, clientv3.WithPrefix(), clientv3.WithRev(start),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	idle := 0
	for {
		select {
		case <-ticker.C:
			h.mu.Lock()
			n := len(h.subs)
			h.mu.Unlock()
			if n == 0 {
				// Nobody has listened for a while: stop watching etcd.
				if idle++; idle >= 3 {
					return
				}
				continue
			}
			idle = 0
			_ = h.store.client.RequestProgress(ctx)
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil || resp.CompactRevision != 0 {
				return
			}
			if resp.IsProgressNotify() {
				h.progress(resp.Header.Revision)
				continue
			}
			for _, e := range resp.Events {
				if e.Kv.ModRevision <= start {
					continue
				}
				if !h.add1(e) {
					return
				}
			}
		}
	}
}

func (h *hub) add1(e *clientv3.Event) bool {
	ev := &hubEvent{key: string(e.Kv.Key), rev: e.Kv.ModRevision}
	var err error
	switch {
	case e.Type == mvccpb.DELETE:
		if e.PrevKv == nil {
			return true
		}
		ev.deleted = true
		ev.cur, err = h.store.decode(e.PrevKv.Value, e.Kv.ModRevision, h.newObj())
	default:
		ev.created = e.IsCreate() || e.PrevKv == nil
		ev.cur, err = h.store.decode(e.Kv.Value, e.Kv.ModRevision, h.newObj())
		if e.PrevKv != nil {
			ev.prevRaw, ev.prevRev = e.PrevKv.Value, e.PrevKv.ModRevision
		}
	}
	if err != nil {
		h.store.log.Error("watch cache: undecodable object, closing", "key", ev.key, "err", err)
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.ring) >= hubWindow {
		h.covered = h.ring[0].rev
		h.ring[0] = nil
		h.ring = h.ring[1:]
	}
	h.ring = append(h.ring, ev)
	h.latest = ev.rev
	for sub := range h.subs {
		h.deliver(sub, ev)
	}
	return true
}

func (h *hub) progress(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev > h.latest {
		h.latest = rev
	}
	for sub := range h.subs {
		if !sub.bookmark || rev < sub.from {
			continue
		}
		obj := h.newObj()
		if setRV(obj, rev) != nil {
			continue
		}
		select {
		case sub.ch <- watch.Event{Type: watch.Bookmark, Object: obj}:
		default:
		}
	}
}

// shutdown ends every subscription; their clients re-watch.
func (h *hub) shutdown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dead = true
	for sub := range h.subs {
		sub.closed = true
		close(sub.ch)
	}
	h.subs = nil
	h.ring = nil
}
