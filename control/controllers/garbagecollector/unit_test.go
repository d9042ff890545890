package garbagecollector_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	metafake "k8s.io/client-go/metadata/fake"

	"github.com/capstan-net/capstan/control/controllers/garbagecollector"
)

func obj(name, uid string, owners ...metav1.OwnerReference) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "d", UID: types.UID(uid), OwnerReferences: owners},
	}
}

func owner(name, uid string) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: name, UID: types.UID(uid)}
}

// On fake clients: an object whose only owner is gone is deleted; one with
// a live owner left keeps it and loses the dangling reference; an object
// with a live owner is untouched.
func TestCollectsOrphansOnFakeClients(t *testing.T) {
	cs := fake.NewClientset()
	cs.Fake.Resources = []*metav1.APIResourceList{{GroupVersion: "v1", APIResources: []metav1.APIResource{
		{Name: "configmaps", Namespaced: true, Kind: "ConfigMap", Verbs: []string{"list", "watch", "get", "delete", "patch"}},
	}}}
	scheme := metafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	md := metafake.NewSimpleMetadataClient(scheme,
		obj("alive", "u-alive"),
		obj("orphan", "u-orphan", owner("gone", "u-gone")),
		obj("half", "u-half", owner("gone", "u-gone"), owner("alive", "u-alive")),
		obj("kept", "u-kept", owner("alive", "u-alive")))
	gc := garbagecollector.New(md, cs.Discovery(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gc.Run(ctx, 1)

	gvr := schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	get := func(name string) (*metav1.PartialObjectMetadata, error) {
		return md.Resource(gvr).Namespace("d").Get(ctx, name, metav1.GetOptions{})
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_, orphanErr := get("orphan")
		half, _ := get("half")
		if orphanErr != nil && half != nil && len(half.OwnerReferences) == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := get("orphan"); err == nil {
		t.Fatal("object whose only owner is gone was not deleted")
	}
	half, err := get("half")
	if err != nil || len(half.OwnerReferences) != 1 || half.OwnerReferences[0].UID != "u-alive" {
		t.Fatalf("object with one live owner: %v %v; want kept with only that owner", half, err)
	}
	if kept, err := get("kept"); err != nil || len(kept.OwnerReferences) != 1 {
		t.Fatalf("object with a live owner was changed: %v %v", kept, err)
	}
}
