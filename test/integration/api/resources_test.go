package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// TestResourceRoundTrip takes one object of every served resource through
// create, get, list (also as a Table and as metadata), update, patch,
// watch and delete, so no resource is left with a broken path.
func TestResourceRoundTrip(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	dyn := dynamic.NewForConfigOrDie(s.Config)
	raw := newRawClient(t, s.Config)
	ctx := context.Background()
	ns := newNamespace(t, cs, "trip")
	suffix := utilrand.String(5)
	now := time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")
	template := `{"metadata":{"labels":{"app":"x"}},"spec":{"containers":[{"name":"c","image":"i"}]}}`

	cases := []struct {
		gvr        schema.GroupVersionResource
		kind       string
		namespaced bool
		body       string // the object without apiVersion, kind and metadata
	}{
		{schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "Namespace", false, `{}`},
		{schema.GroupVersionResource{Version: "v1", Resource: "pods"}, "Pod", true, `{"spec":{"containers":[{"name":"c","image":"i"}]}}`},
		{schema.GroupVersionResource{Version: "v1", Resource: "services"}, "Service", true, `{"spec":{"ports":[{"port":80}]}}`},
		{schema.GroupVersionResource{Version: "v1", Resource: "endpoints"}, "Endpoints", true, `{}`},
		{schema.GroupVersionResource{Version: "v1", Resource: "nodes"}, "Node", false, `{}`},
		{schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, "ConfigMap", true, `{"data":{"a":"b"}}`},
		{schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, "Secret", true, `{"stringData":{"a":"b"}}`},
		{schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}, "ServiceAccount", true, `{}`},
		{schema.GroupVersionResource{Version: "v1", Resource: "events"}, "Event", true,
			`{"involvedObject":{"kind":"Pod","name":"p","namespace":"` + ns + `"},"reason":"R","message":"m","type":"Normal","source":{"component":"test"}}`},
		{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, "Deployment", true,
			`{"spec":{"selector":{"matchLabels":{"app":"x"}},"template":` + template + `}}`},
		{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}, "ReplicaSet", true,
			`{"spec":{"selector":{"matchLabels":{"app":"x"}},"template":` + template + `}}`},
		{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}, "DaemonSet", true,
			`{"spec":{"selector":{"matchLabels":{"app":"x"}},"template":` + template + `}}`},
		{schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}, "EndpointSlice", true, `{"addressType":"IPv4"}`},
		{schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}, "NetworkPolicy", true, `{"spec":{"podSelector":{}}}`},
		{schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "servicecidrs"}, "ServiceCIDR", false, `{"spec":{"cidrs":["10.250.0.0/24"]}}`},
		{schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}, "Lease", true, `{"spec":{"holderIdentity":"me"}}`},
		{schema.GroupVersionResource{Group: "events.k8s.io", Version: "v1", Resource: "events"}, "Event", true,
			`{"eventTime":"` + now + `","reportingController":"capstan.test/c","reportingInstance":"i","action":"A","reason":"R","type":"Normal","regarding":{"kind":"Pod","name":"p","namespace":"` + ns + `"}}`},
	}
	for _, tc := range cases {
		t.Run(tc.gvr.Group+"/"+tc.gvr.Resource, func(t *testing.T) {
			name := "obj-" + suffix
			var obj map[string]any
			if err := json.Unmarshal([]byte(tc.body), &obj); err != nil {
				t.Fatal(err)
			}
			u := &unstructured.Unstructured{Object: obj}
			u.SetAPIVersion(tc.gvr.GroupVersion().String())
			u.SetKind(tc.kind)
			u.SetName(name)
			var ri dynamic.ResourceInterface = dyn.Resource(tc.gvr)
			base := "/api/v1"
			if tc.gvr.Group != "" {
				base = "/apis/" + tc.gvr.Group + "/v1"
			}
			if tc.namespaced {
				ri = dyn.Resource(tc.gvr).Namespace(ns)
				base += "/namespaces/" + ns
			}
			base += "/" + tc.gvr.Resource

			created, err := ri.Create(ctx, u, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if created.GetKind() != tc.kind || created.GetAPIVersion() != tc.gvr.GroupVersion().String() || created.GetUID() == "" || created.GetResourceVersion() == "" {
				t.Errorf("created %s %s uid %q rv %q", created.GetAPIVersion(), created.GetKind(), created.GetUID(), created.GetResourceVersion())
			}
			w, err := ri.Watch(ctx, metav1.ListOptions{ResourceVersion: created.GetResourceVersion(), FieldSelector: "metadata.name=" + name})
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			defer w.Stop()

			got, err := ri.Get(ctx, name, metav1.GetOptions{})
			if err != nil || got.GetResourceVersion() != created.GetResourceVersion() {
				t.Fatalf("get: %v (rv %v, created %s)", err, got, created.GetResourceVersion())
			}
			list, err := ri.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
			if err != nil || len(list.Items) != 1 || list.GetResourceVersion() == "" {
				t.Fatalf("list: %v %v", err, list)
			}
			for _, accept := range []string{"application/json;as=Table;v=v1;g=meta.k8s.io", "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"} {
				r := raw.doWith(t, "GET", base+"?fieldSelector=metadata.name%3D"+name, "", accept, nil)
				kind := strings.TrimSuffix(strings.Split(strings.Split(accept, "as=")[1], ";")[0], "List")
				if r.code != 200 || !strings.Contains(string(r.body), `"kind":"`+kind) || !strings.Contains(string(r.body), name) {
					t.Errorf("list as %s: %d %s", kind, r.code, truncate(r.body))
				}
			}

			got.SetLabels(map[string]string{"updated": "yes"})
			updated, err := ri.Update(ctx, got, metav1.UpdateOptions{})
			if err != nil {
				t.Fatalf("update: %v", err)
			}
			if updated.GetLabels()["updated"] != "yes" || updated.GetResourceVersion() == got.GetResourceVersion() {
				t.Errorf("update: labels %v rv %s (was %s)", updated.GetLabels(), updated.GetResourceVersion(), got.GetResourceVersion())
			}
			patched, err := ri.Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"annotations":{"patched":"yes"}}}`), metav1.PatchOptions{})
			if err != nil {
				t.Fatalf("patch: %v", err)
			}
			applied, err := ri.Patch(ctx, name, types.ApplyYAMLPatchType,
				[]byte(fmt.Sprintf(`{"apiVersion":%q,"kind":%q,"metadata":{"name":%q,"annotations":{"applied":"yes"}}}`, tc.gvr.GroupVersion(), tc.kind, name)),
				metav1.PatchOptions{FieldManager: "trip"})
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if applied.GetAnnotations()["patched"] != "yes" || applied.GetAnnotations()["applied"] != "yes" || applied.GetLabels()["updated"] != "yes" {
				t.Errorf("after update, patch and apply: labels %v annotations %v", applied.GetLabels(), applied.GetAnnotations())
			}
			if err := ri.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if tc.gvr.Resource != "namespaces" { // namespaces terminate first
				if _, err := ri.Get(ctx, name, metav1.GetOptions{}); statusCode(err) != 404 {
					t.Errorf("get after delete: %s", fmtErr(err))
				}
			}

			want := []string{"MODIFIED " + updated.GetResourceVersion(), "MODIFIED " + patched.GetResourceVersion(), "MODIFIED " + applied.GetResourceVersion()}
			switch tc.gvr.Resource {
			case "namespaces":
				want = append(want, "MODIFIED") // Terminating
			case "pods":
				// Graceful deletion stamps the pod first, even with no grace.
				want = append(want, "MODIFIED", "DELETED")
			default:
				want = append(want, "DELETED")
			}
			var events []string
			timeout := time.After(10 * time.Second)
			for len(events) < len(want) {
				select {
				case ev, ok := <-w.ResultChan():
					if !ok {
						t.Fatalf("watch closed after %v", events)
					}
					if ev.Type == watch.Error {
						t.Fatalf("watch error: %v", ev.Object)
					}
					o := ev.Object.(*unstructured.Unstructured)
					if o.GetKind() != tc.kind || o.GetName() != name {
						t.Errorf("watch event for %s %s", o.GetKind(), o.GetName())
					}
					e := string(ev.Type) + " " + o.GetResourceVersion()
					if len(events) >= 3 {
						e = string(ev.Type)
					}
					events = append(events, e)
				case <-timeout:
					t.Fatalf("watch events %v, want %v", events, want)
				}
			}
			if strings.Join(events, ",") != strings.Join(want, ",") {
				t.Errorf("watch events %v, want %v", events, want)
			}
		})
	}
	assertNoServerErrors(t, s)
}
