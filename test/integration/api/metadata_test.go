package api_test

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// A metadata-only watch (what the garbage collector runs for every resource)
// gets PartialObjectMetadata in every event, bookmarks included: a full object
// in a bookmark broke the watch ("no kind Deployment is registered").
func TestMetadataWatchBookmarks(t *testing.T) {
	s := startServer(t, servertest.Options{})
	mc, err := metadata.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gvr := schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	w, err := mc.Resource(gvr).Namespace("default").Watch(ctx, metav1.ListOptions{AllowWatchBookmarks: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// Test servers send a bookmark every 2 s.
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch ended before a bookmark")
			}
			if ev.Type == watch.Error {
				t.Fatalf("error event: %v", ev.Object)
			}
			if ev.Type != watch.Bookmark {
				continue
			}
			m, ok := ev.Object.(*metav1.PartialObjectMetadata)
			if !ok || m.ResourceVersion == "" {
				t.Fatalf("bookmark is %T %+v, want PartialObjectMetadata with a resourceVersion", ev.Object, ev.Object)
			}
			return
		case <-ctx.Done():
			t.Fatal("no bookmark within 30 s")
		}
	}
}
