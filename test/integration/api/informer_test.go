package api_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// gate sits in an informer's HTTP transport. It records every request and
// its answer, and can hold: end the open watch streams cleanly (as a server
// closing them would) and keep new requests waiting until released.
type gate struct {
	next http.RoundTripper

	mu      sync.Mutex
	held    chan struct{} // non-nil while holding
	streams map[*cutBody]bool
	seen    []seenRequest
}

type seenRequest struct {
	query url.Values
	code  int
}

func (r seenRequest) watch() bool { return r.query.Get("watch") == "true" }
func (r seenRequest) streamingList() bool {
	return r.watch() && r.query.Get("sendInitialEvents") == "true"
}
func (r seenRequest) String() string { return fmt.Sprintf("%d %s", r.code, r.query.Encode()) }

func newGate() *gate { return &gate{streams: map[*cutBody]bool{}} }

func (g *gate) wrap(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		g.next = rt
		return g
	})
	return cfg
}

func (g *gate) RoundTrip(req *http.Request) (*http.Response, error) {
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	resp, err := g.next.RoundTrip(req)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		g.seen = append(g.seen, seenRequest{query: req.URL.Query(), code: -1})
		return nil, err
	}
	g.seen = append(g.seen, seenRequest{query: req.URL.Query(), code: resp.StatusCode})
	if req.URL.Query().Get("watch") == "true" && resp.StatusCode == http.StatusOK {
		b := &cutBody{ReadCloser: resp.Body, g: g}
		g.streams[b] = true
		resp.Body = b
	}
	return resp, nil
}

// hold ends the open watches and parks new requests.
func (g *gate) hold() {
	g.mu.Lock()
	g.held = make(chan struct{})
	streams := g.streams
	g.streams = map[*cutBody]bool{}
	g.mu.Unlock()
	for b := range streams {
		b.cut()
	}
}

func (g *gate) release() {
	g.mu.Lock()
	close(g.held)
	g.held = nil
	g.mu.Unlock()
}

func (g *gate) requests() []seenRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]seenRequest(nil), g.seen...)
}

// cutBody turns the error of a body closed under a reader into a clean
// EOF, so the watch ends the way a server ending it would.
type cutBody struct {
	io.ReadCloser
	g *gate

	mu     sync.Mutex
	wasCut bool
}

func (b *cutBody) cut() {
	b.mu.Lock()
	b.wasCut = true
	b.mu.Unlock()
	b.ReadCloser.Close()
}

func (b *cutBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.mu.Lock()
		cut := b.wasCut
		b.mu.Unlock()
		if cut {
			return n, io.EOF
		}
	}
	return n, err
}

func (b *cutBody) Close() error {
	b.g.mu.Lock()
	delete(b.g.streams, b)
	b.g.mu.Unlock()
	return b.ReadCloser.Close()
}

// eventLog records informer notifications as "add x v=1" lines.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func describeCM(obj any) string {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return fmt.Sprintf("unexpected %T", obj)
	}
	return cm.Name + " v=" + cm.Data["v"]
}

func (l *eventLog) add(s string) {
	l.mu.Lock()
	l.events = append(l.events, s)
	l.mu.Unlock()
}

func (l *eventLog) handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { l.add("add " + describeCM(obj)) },
		UpdateFunc: func(old, obj any) {
			// A relist re-delivers unchanged objects as updates; skip those.
			if old.(*corev1.ConfigMap).ResourceVersion == obj.(*corev1.ConfigMap).ResourceVersion {
				return
			}
			l.add("update " + describeCM(old) + " -> " + describeCM(obj))
		},
		DeleteFunc: func(obj any) { l.add("delete " + describeCM(obj)) },
	}
}

func (l *eventLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events...)
}

// waitEvents waits until the log holds want (in order, exactly).
func (l *eventLog) waitEvents(t *testing.T, want []string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := l.snapshot()
		if strings.Join(got, "\n") == strings.Join(want, "\n") {
			return
		}
		if len(got) > len(want) || time.Now().After(deadline) {
			t.Fatalf("informer events:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// noWatchList marks a ListWatch as not supporting streaming lists, which
// makes its reflector use the plain list-then-watch protocol.
type noWatchList struct{ *cache.ListWatch }

func (noWatchList) IsWatchListSemanticsUnSupported() bool { return true }

// startInformer runs a ConfigMap informer on ns through g. streaming
// selects client-go's default streaming list (a SharedInformerFactory);
// otherwise the informer lists, then watches.
func startInformer(t *testing.T, cfg *rest.Config, g *gate, ns string, streaming bool, log *eventLog) cache.SharedIndexInformer {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(g.wrap(cfg))
	var inf cache.SharedIndexInformer
	if streaming {
		factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
		inf = factory.Core().V1().ConfigMaps().Informer()
	} else {
		lw := cache.NewListWatchFromClient(cs.CoreV1().RESTClient(), "configmaps", ns, fields.Everything())
		inf = cache.NewSharedIndexInformer(noWatchList{lw}, &corev1.ConfigMap{}, 0, cache.Indexers{})
	}
	if _, err := inf.AddEventHandler(log.handler()); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { inf.Run(stop); close(done) }()
	t.Cleanup(func() { close(stop); <-done })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatalf("informer did not sync; requests: %v", g.requests())
	}
	return inf
}

func configMap(name, v string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"v": v}}
}

func setV(t *testing.T, cs kubernetes.Interface, ns, name, v string) *corev1.ConfigMap {
	t.Helper()
	ctx := context.Background()
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["v"] = v
	cm, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

// checkProtocol asserts which list protocol an informer used.
func checkProtocol(t *testing.T, reqs []seenRequest, streaming bool) {
	t.Helper()
	if len(reqs) == 0 {
		t.Fatal("informer made no requests")
	}
	first := reqs[0]
	for _, r := range reqs {
		if streaming && !r.watch() {
			t.Errorf("streaming informer fell back to a plain list: %v (all: %v)", r, reqs)
		}
		if !streaming && r.streamingList() {
			t.Errorf("list+watch informer asked for a streaming list: %v", r)
		}
	}
	switch {
	case streaming && (!first.streamingList() || first.code != http.StatusOK):
		t.Errorf("first request %v, want a 200 streaming list (watch with sendInitialEvents=true)", first)
	case !streaming && (first.watch() || first.code != http.StatusOK):
		t.Errorf("first request %v, want a 200 list", first)
	}
}

// TestInformerEventsInOrder: adds, updates and deletes reach an informer in
// the order they were made, through the streaming list and through
// list+watch.
func TestInformerEventsInOrder(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	for _, mode := range []string{"streaming", "listwatch"} {
		t.Run(mode, func(t *testing.T) {
			cs := s.Client()
			ctx := context.Background()
			ns := newNamespace(t, cs, "inform")
			if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("before", "0"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			g := newGate()
			log := &eventLog{}
			inf := startInformer(t, s.Config, g, ns, mode == "streaming", log)
			log.waitEvents(t, []string{"add before v=0"})

			if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("a", "1"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			setV(t, cs, ns, "a", "2")
			setV(t, cs, ns, "a", "3")
			if err := cs.CoreV1().ConfigMaps(ns).Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("b", "1"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			last := setV(t, cs, ns, "before", "1")
			log.waitEvents(t, []string{
				"add before v=0",
				"add a v=1",
				"update a v=1 -> a v=2",
				"update a v=2 -> a v=3",
				"delete a v=3",
				"add b v=1",
				"update before v=0 -> before v=1",
			})
			obj, ok, err := inf.GetStore().GetByKey(ns + "/before")
			if err != nil || !ok {
				t.Fatalf("store lost %s/before: %v", ns, err)
			}
			if rv := obj.(*corev1.ConfigMap).ResourceVersion; rv != last.ResourceVersion {
				t.Errorf("informer has resourceVersion %s, server answered %s", rv, last.ResourceVersion)
			}
			if got, want := rvInt(t, inf.LastSyncResourceVersion()), rvInt(t, last.ResourceVersion); got < want {
				t.Errorf("informer last sync resourceVersion %d is behind %d", got, want)
			}
			checkProtocol(t, g.requests(), mode == "streaming")
		})
	}
}

// waitCompacted writes until a watch from rv is refused as expired, and
// returns that error.
func waitCompacted(t *testing.T, cs kubernetes.Interface, ns, rv string) error {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("tick", "0"), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		setV(t, cs, ns, "tick", fmt.Sprint(i+1))
		w, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
		if err != nil {
			return err
		}
		// The server may also end an accepted watch with an expired event.
		select {
		case ev := <-w.ResultChan():
			if ev.Type == watch.Error {
				w.Stop()
				return apierrors.FromObject(ev.Object)
			}
		case <-time.After(200 * time.Millisecond):
		}
		w.Stop()
		if time.Now().After(deadline) {
			t.Fatalf("resourceVersion %s was not compacted within 30s", rv)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestWatchCompaction: a watch resumed from a compacted resourceVersion is
// answered 410 Gone, as are lists and continue tokens at that version, and
// an informer cut off across a compaction relists and catches up. Not
// parallel: compacting a shared external etcd would expire other tests'
// continue tokens.
func TestWatchCompaction(t *testing.T) {
	s := startServer(t, servertest.Options{CompactionInterval: time.Second})
	cs := s.Client()
	ctx := context.Background()

	t.Run("gone", func(t *testing.T) {
		ns := newNamespace(t, cs, "compact")
		var first *corev1.ConfigMap
		for _, n := range []string{"c1", "c2", "c3"} {
			cm, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap(n, "0"), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if first == nil {
				first = cm
			}
		}
		page, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if page.Continue == "" {
			t.Fatalf("list of 3 with limit 1 has no continue token")
		}
		err = waitCompacted(t, cs, ns, first.ResourceVersion)
		if !apierrors.IsResourceExpired(err) || statusCode(err) != http.StatusGone {
			t.Fatalf("watch from compacted resourceVersion %s: %s, want 410 Expired", first.ResourceVersion, fmtErr(err))
		}
		if !strings.Contains(err.Error(), "too old resource version") {
			t.Errorf("410 message %q does not say the version is too old", err.Error())
		}
		_, err = cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{ResourceVersion: first.ResourceVersion, ResourceVersionMatch: metav1.ResourceVersionMatchExact})
		if statusCode(err) != http.StatusGone {
			t.Errorf("exact list at compacted resourceVersion: %s, want 410", fmtErr(err))
		}
		_, err = cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{Limit: 1, Continue: page.Continue})
		if statusCode(err) != http.StatusGone {
			t.Errorf("list with a compacted continue token: %s, want 410", fmtErr(err))
		}
		// NotOlderThan needs no history: it is served from the present.
		list, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{ResourceVersion: first.ResourceVersion, ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan})
		if err != nil {
			t.Fatalf("NotOlderThan list at a compacted resourceVersion: %v", err)
		}
		if len(list.Items) != 4 { // c1-c3 and tick
			t.Errorf("NotOlderThan list has %d items, want 4", len(list.Items))
		}
	})

	for _, mode := range []string{"streaming", "listwatch"} {
		t.Run("informer-recovers-"+mode, func(t *testing.T) {
			streaming := mode == "streaming"
			ns := newNamespace(t, cs, "recover")
			for _, n := range []string{"keep", "change", "remove"} {
				if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap(n, "0"), metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			g := newGate()
			log := &eventLog{}
			inf := startInformer(t, s.Config, g, ns, streaming, log)
			waitSorted(t, log, []string{"add change v=0", "add keep v=0", "add remove v=0"})
			// Let the watch live past client-go's "very short watch" limit,
			// so that ending it makes the reflector resume rather than relist.
			time.Sleep(1500 * time.Millisecond)

			g.hold()
			before := len(g.requests())
			cur, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			setV(t, cs, ns, "change", "1")
			if err := cs.CoreV1().ConfigMaps(ns).Delete(ctx, "remove", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("new", "1"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := waitCompacted(t, cs, ns, cur.ResourceVersion); statusCode(err) != http.StatusGone {
				t.Fatalf("waiting for compaction: %s", fmtErr(err))
			}
			g.release()

			// "tick" comes from waitCompacted; its version depends on timing.
			waitFor(t, 30*time.Second, "informer to catch up", func() (bool, error) {
				var got []string
				for _, e := range log.snapshot() {
					if !strings.Contains(e, "tick") {
						got = append(got, e)
					}
				}
				sort.Strings(got)
				want := []string{"add change v=0", "add keep v=0", "add new v=1", "add remove v=0", "delete remove v=0", "update change v=0 -> change v=1"}
				return strings.Join(got, "\n") == strings.Join(want, "\n"), fmt.Errorf("events %v", got)
			})
			keys := inf.GetStore().ListKeys()
			sort.Strings(keys)
			if want := []string{ns + "/change", ns + "/keep", ns + "/new", ns + "/tick"}; strings.Join(keys, ",") != strings.Join(want, ",") {
				t.Errorf("informer store has %v, want %v", keys, want)
			}

			// The resumed watch was refused as expired, and the informer
			// then relisted with the same protocol it started with.
			after := g.requests()[before:]
			gone := -1
			for i, r := range after {
				if r.code == http.StatusGone {
					gone = i
					break
				}
			}
			if gone < 0 {
				t.Fatalf("no request was answered 410 after the compaction: %v", after)
			}
			if !after[gone].watch() || after[gone].query.Get("resourceVersion") == "" {
				t.Errorf("410 went to %v, want the watch resumed from the last seen resourceVersion", after[gone])
			}
			relisted := false
			for _, r := range after[gone+1:] {
				if r.code == http.StatusOK && ((streaming && r.streamingList()) || (!streaming && !r.watch())) {
					relisted = true
				}
			}
			if !relisted {
				t.Errorf("informer did not relist after 410: %v", after)
			}
			checkProtocol(t, g.requests(), streaming)
		})
	}
}

func rvInt(t *testing.T, rv string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(rv, 10, 64)
	if err != nil {
		t.Fatalf("resourceVersion %q is not a revision: %v", rv, err)
	}
	return n
}

// waitSorted waits until the log, sorted, equals want.
func waitSorted(t *testing.T, log *eventLog, want []string) {
	t.Helper()
	waitFor(t, 15*time.Second, "informer events", func() (bool, error) {
		got := log.snapshot()
		sort.Strings(got)
		return strings.Join(got, "\n") == strings.Join(want, "\n"), fmt.Errorf("events %v", got)
	})
}
