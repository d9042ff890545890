package storage_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/capstan-net/capstan/control/etcd"
	"github.com/capstan-net/capstan/control/storage"
)

// newStore connects to CAPSTAN_TEST_ETCD if set (under a private prefix),
// else starts an embedded etcd in a temp dir.
func newStore(t *testing.T) *storage.Store { return newStoreB(t) }

func newStoreB(t testing.TB) *storage.Store {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := etcd.Config{DataDir: t.TempDir(), ProgressNotifyInterval: 200 * time.Millisecond}
	if v := os.Getenv("CAPSTAN_TEST_ETCD"); v != "" {
		cfg.Endpoints = strings.Split(v, ",")
		cfg.Prefix = fmt.Sprintf("/storage-test/%d", time.Now().UnixNano())
	}
	e, err := etcd.Start(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return storage.New(e.Client, scheme.Codecs.LegacyCodec(corev1.SchemeGroupVersion), log)
}

func cm(name string, lbls map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: lbls}}
}

func newCM() runtime.Object { return &corev1.ConfigMap{} }

const prefix = "/registry/configmaps/ns/"

func rvOf(obj runtime.Object) int64 {
	n, _ := strconv.ParseInt(obj.(*corev1.ConfigMap).ResourceVersion, 10, 64)
	return n
}

func TestCreateGetConflict(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	obj := cm("a", nil)
	if err := s.Create(ctx, prefix+"a", obj); err != nil {
		t.Fatal(err)
	}
	if obj.ResourceVersion == "" {
		t.Fatal("create did not set resourceVersion")
	}
	if err := s.Create(ctx, prefix+"a", cm("a", nil)); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second create: got %v, want ErrExists", err)
	}
	got := &corev1.ConfigMap{}
	if err := s.Get(ctx, prefix+"a", got); err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != obj.ResourceVersion {
		t.Fatalf("get rv %s, create rv %s", got.ResourceVersion, obj.ResourceVersion)
	}
	if err := s.Get(ctx, prefix+"missing", &corev1.ConfigMap{}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
}

func TestGuaranteedUpdateConcurrent(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if err := s.Create(ctx, prefix+"c", cm("c", map[string]string{"n": "0"})); err != nil {
		t.Fatal(err)
	}
	const writers = 20
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.GuaranteedUpdate(ctx, prefix+"c", newCM, nil, func(existing runtime.Object) (runtime.Object, error) {
				c := existing.(*corev1.ConfigMap).DeepCopy()
				n, _ := strconv.Atoi(c.Labels["n"])
				c.Labels["n"] = strconv.Itoa(n + 1)
				return c, nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got := &corev1.ConfigMap{}
	if err := s.Get(ctx, prefix+"c", got); err != nil {
		t.Fatal(err)
	}
	if got.Labels["n"] != strconv.Itoa(writers) {
		t.Fatalf("counter = %s, want %d: an update was lost", got.Labels["n"], writers)
	}
}

func TestUpdateNoopKeepsVersion(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	obj := cm("n", map[string]string{"a": "b"})
	if err := s.Create(ctx, prefix+"n", obj); err != nil {
		t.Fatal(err)
	}
	out, err := s.GuaranteedUpdate(ctx, prefix+"n", newCM, nil, func(existing runtime.Object) (runtime.Object, error) {
		return existing.DeepCopyObject(), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if rvOf(out) != rvOf(obj) {
		t.Fatalf("no-op update changed rv %d -> %d", rvOf(obj), rvOf(out))
	}
}

func TestDeletePreconditions(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	obj := cm("d", nil)
	if err := s.Create(ctx, prefix+"d", obj); err != nil {
		t.Fatal(err)
	}
	stale := "1"
	if _, err := s.Delete(ctx, prefix+"d", newCM, &storage.Preconditions{ResourceVersion: &stale}, nil); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("delete with stale rv: %v", err)
	}
	rv := obj.ResourceVersion
	if _, err := s.Delete(ctx, prefix+"d", newCM, &storage.Preconditions{ResourceVersion: &rv}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, prefix+"d", newCM, nil, nil); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("repeat delete: %v", err)
	}
}

func TestListPagingAndSelectors(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	for i := 0; i < 25; i++ {
		l := map[string]string{"parity": []string{"even", "odd"}[i%2]}
		if err := s.Create(ctx, prefix+fmt.Sprintf("p%02d", i), cm(fmt.Sprintf("p%02d", i), l)); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	opts := storage.ListOptions{Limit: 10}
	pages := 0
	for {
		res, err := s.List(ctx, prefix, opts, newCM)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, it := range res.Items {
			names = append(names, it.(*corev1.ConfigMap).Name)
		}
		if pages == 1 && (res.Remaining == nil || *res.Remaining != 15) {
			t.Fatalf("first page remaining = %v, want 15", res.Remaining)
		}
		if res.Continue == "" {
			break
		}
		opts.Continue = res.Continue
	}
	if len(names) != 25 || pages != 3 {
		t.Fatalf("paged %d items over %d pages, want 25 over 3", len(names), pages)
	}
	sel := labels.SelectorFromSet(labels.Set{"parity": "odd"})
	res, err := s.List(ctx, prefix, storage.ListOptions{Predicate: storage.Predicate{Label: sel, GetAttrs: attrs}}, newCM)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 12 {
		t.Fatalf("odd items = %d, want 12", len(res.Items))
	}
	fsel := fields.ParseSelectorOrDie("metadata.name!=p00")
	res, err = s.List(ctx, prefix, storage.ListOptions{Limit: 5, Predicate: storage.Predicate{Field: fsel, GetAttrs: attrs}}, newCM)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 5 || res.Items[0].(*corev1.ConfigMap).Name != "p01" {
		t.Fatalf("field-selected page wrong: %d items", len(res.Items))
	}
}

func attrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	c := obj.(*corev1.ConfigMap)
	return c.Labels, fields.Set{"metadata.name": c.Name, "metadata.namespace": c.Namespace}, nil
}

func TestListExactAndCompacted(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	first := cm("x", nil)
	if err := s.Create(ctx, prefix+"x", first); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, prefix+"y", cm("y", nil)); err != nil {
		t.Fatal(err)
	}
	res, err := s.List(ctx, prefix, storage.ListOptions{ResourceVersion: first.ResourceVersion, Match: metav1.ResourceVersionMatchExact}, newCM)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 1 {
		t.Fatalf("exact list at first create saw %d items, want 1", len(res.Items))
	}
	cur, _ := s.CurrentRevision(ctx)
	if err := s.Compact(ctx, cur); err != nil {
		t.Fatal(err)
	}
	_, err = s.List(ctx, prefix, storage.ListOptions{ResourceVersion: first.ResourceVersion, Match: metav1.ResourceVersionMatchExact}, newCM)
	if !errors.Is(err, storage.ErrGone) {
		t.Fatalf("exact list at compacted rv: %v, want ErrGone", err)
	}
	_, err = s.Watch(ctx, prefix, storage.WatchOptions{ResourceVersion: first.ResourceVersion}, newCM)
	if !errors.Is(err, storage.ErrGone) {
		t.Fatalf("watch from compacted rv: %v, want ErrGone", err)
	}
	_, err = s.List(ctx, prefix, storage.ListOptions{ResourceVersion: strconv.FormatInt(cur+1000, 10)}, newCM)
	if !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("list from future rv: %v, want ErrTooLarge", err)
	}
}

func next(t *testing.T, w watch.Interface) watch.Event {
	t.Helper()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			t.Fatal("watch closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event in 10s")
	}
	return watch.Event{}
}

func TestWatchOrderAndFilter(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	start, _ := s.CurrentRevision(ctx)
	sel := labels.SelectorFromSet(labels.Set{"app": "web"})
	w, err := s.Watch(ctx, prefix, storage.WatchOptions{ResourceVersion: strconv.FormatInt(start, 10),
		Predicate: storage.Predicate{Label: sel, GetAttrs: attrs}}, newCM)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	key := prefix + "w"
	obj := cm("w", map[string]string{"app": "web"})
	if err := s.Create(ctx, key, obj); err != nil {
		t.Fatal(err)
	}
	set := func(app string) {
		if _, err := s.GuaranteedUpdate(ctx, key, newCM, nil, func(e runtime.Object) (runtime.Object, error) {
			c := e.(*corev1.ConfigMap).DeepCopy()
			c.Labels["app"] = app
			c.Data = map[string]string{"t": time.Now().String()}
			return c, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	set("web") // modified, still matching
	set("db")  // leaves the selection: DELETED
	set("web") // enters again: ADDED
	if _, err := s.Delete(ctx, key, newCM, nil, nil); err != nil {
		t.Fatal(err)
	}
	want := []watch.EventType{watch.Added, watch.Modified, watch.Deleted, watch.Added, watch.Deleted}
	var last int64
	for i, wt := range want {
		ev := next(t, w)
		if ev.Type != wt {
			t.Fatalf("event %d: %s, want %s", i, ev.Type, wt)
		}
		if rv := rvOf(ev.Object); rv <= last {
			t.Fatalf("event %d: rv %d not after %d", i, rv, last)
		} else {
			last = rv
		}
	}
}

func TestWatchInitialEventsAndBookmarks(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	for _, n := range []string{"i1", "i2"} {
		if err := s.Create(ctx, prefix+n, cm(n, nil)); err != nil {
			t.Fatal(err)
		}
	}
	yes := true
	w, err := s.Watch(ctx, prefix, storage.WatchOptions{SendInitialEvents: &yes, AllowBookmarks: true,
		BookmarkInterval: 300 * time.Millisecond}, newCM)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for i := 0; i < 2; i++ {
		if ev := next(t, w); ev.Type != watch.Added {
			t.Fatalf("initial event %d: %s", i, ev.Type)
		}
	}
	ev := next(t, w)
	if ev.Type != watch.Bookmark || ev.Object.(*corev1.ConfigMap).Annotations[storage.InitialEventsAnnotation] != "true" {
		t.Fatalf("want initial-events-end bookmark, got %s %v", ev.Type, ev.Object)
	}
	// A later progress bookmark proves the stream is alive when idle.
	if ev := next(t, w); ev.Type != watch.Bookmark {
		t.Fatalf("want periodic bookmark, got %s", ev.Type)
	}
}
