package api_test

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// badCase is one request the server must refuse with code, a Status whose
// message contains msg and, for 422s, causes naming fields.
type badCase struct {
	name        string
	client      string // "" admin, "anon", "node" (the node n1), "token" (join token)
	method      string
	path        string
	contentType string
	body        []byte
	accept      string
	code        int
	msg         string
	fields      []string
}

// TestBadRequests sends malformed, invalid, conflicting and unauthorized
// requests and checks each is refused with the right code and a useful
// Status; none may produce a 5xx or break the server.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	ctx := context.Background()
	ns := newNamespace(t, cs, "bad")
	term := newNamespace(t, cs, "terminating")

	cm, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("cm", "0"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale := cm.ResourceVersion
	cm = setV(t, cs, ns, "cm", "1")
	for i := 0; i < 3; i++ {
		tmp := configMap(fmt.Sprintf("tmp-%d", i), "0")
		tmp.Labels = map[string]string{"group": "tmp"}
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, tmp, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "lease"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	taken, err := cs.CoreV1().Services(ns).Create(ctx, service("taken", "", -1), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("unbound", "", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("web", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n1, n2 := "n1-"+utilrand.String(5), "n2-"+utilrand.String(5)
	for _, n := range []string{n1, n2} {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), n, metav1.DeleteOptions{}) })
	}
	// A finalizer keeps term Terminating for the whole test.
	hold := configMap("hold", "0")
	hold.Finalizers = []string{"capstan.test/hold"}
	if _, err := cs.CoreV1().ConfigMaps(term).Create(ctx, hold, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.CoreV1().ConfigMaps(term).Patch(context.Background(), "hold", "application/merge-patch+json", []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	if err := cs.CoreV1().Namespaces().Delete(ctx, term, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	admin := newRawClient(t, s.Config)
	clients := map[string]*rawClient{
		"":     admin,
		"anon": newRawClient(t, rest.AnonymousClientConfig(s.Config)),
		"node": newRawClient(t, nodeConfig(t, s, n1)),
	}
	tokenCfg := rest.AnonymousClientConfig(s.Config)
	tokenCfg.BearerToken = "not-the-join-token"
	clients["badtoken"] = newRawClient(t, tokenCfg)

	cmPath := "/api/v1/namespaces/" + ns + "/configmaps"
	cmJSON := func(name string, extra string) []byte {
		return []byte(fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":%q}%s}`, name, extra))
	}
	curCM := func(name, rv string) []byte {
		return []byte(fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":%q,"resourceVersion":%q},"data":{"v":"x"}}`, name, rv))
	}
	svcJSON := func(name, spec string) []byte {
		return []byte(fmt.Sprintf(`{"apiVersion":"v1","kind":"Service","metadata":{"name":%q},"spec":%s}`, name, spec))
	}
	svcPath := "/api/v1/namespaces/" + ns + "/services"
	nodeJSON := func(name string) []byte {
		return []byte(fmt.Sprintf(`{"apiVersion":"v1","kind":"Node","metadata":{"name":%q,"labels":{"x":"y"}}}`, name))
	}
	big := []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"k":"` + strings.Repeat("x", 3<<20) + `"}}`)
	const (
		jsonCT  = "application/json"
		mergeCT = "application/merge-patch+json"
		jpCT    = "application/json-patch+json"
		smpCT   = "application/strategic-merge-patch+json"
		applyCT = "application/apply-patch+yaml"
	)
	w := "?watch=true&"
	q := url.QueryEscape

	cases := []badCase{
		// Routing.
		{name: "unknown resource", method: "GET", path: "/api/v1/namespaces/" + ns + "/widgets", code: 404, msg: "could not find the requested resource"},
		{name: "unknown group", method: "GET", path: "/apis/widgets.example.com/v1/widgets", code: 404, msg: "could not find"},
		{name: "unknown subresource", method: "GET", path: cmPath + "/cm/status", code: 404, msg: "could not find"},
		{name: "namespaced path for a cluster resource", method: "GET", path: "/api/v1/namespaces/" + ns + "/nodes", code: 404, msg: "could not find"},
		{name: "missing object", method: "GET", path: cmPath + "/nope", code: 404, msg: `configmaps "nope" not found`},
		{name: "POST to a named object", method: "POST", path: cmPath + "/cm", contentType: jsonCT, body: cmJSON("cm", ""), code: 405, msg: "not supported"},
		{name: "unsupported method", method: "OPTIONS", path: cmPath, code: 405, msg: "OPTIONS"},
		{name: "GET of a create-only subresource", method: "GET", path: "/api/v1/namespaces/" + ns + "/pods/unbound/binding", code: 405, msg: "pods/binding"},
		{name: "PUT of a pod through its eviction", method: "PUT", path: "/api/v1/namespaces/" + ns + "/pods/unbound/eviction", contentType: jsonCT,
			body: []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"unbound"}}`), code: 405, msg: "pods/eviction"},
		{name: "watch of a status subresource", method: "GET", path: "/api/v1/namespaces/" + ns + "/pods/unbound/status?watch=true", code: 405, msg: "pods/status"},
		{name: "PATCH of namespace finalize", method: "PATCH", path: "/api/v1/namespaces/" + ns + "/finalize", contentType: "application/merge-patch+json", body: []byte(`{"spec":{"finalizers":[]}}`), code: 405, msg: "namespaces/finalize"},
		{name: "unacceptable Accept", method: "GET", path: cmPath + "/cm", accept: "application/xml", code: 406, msg: "only the following media types are accepted"},

		// Bodies.
		{name: "malformed JSON", method: "POST", path: cmPath, contentType: jsonCT, body: []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":`), code: 400, msg: "unknown format"},
		{name: "empty body", method: "POST", path: cmPath, contentType: jsonCT, body: nil, code: 400, msg: "empty"},
		{name: "body over 3 MiB", method: "POST", path: cmPath, contentType: jsonCT, body: big, code: 413, msg: "too large"},
		{name: "unsupported content type", method: "POST", path: cmPath, contentType: "application/xml", body: cmJSON("x", ""), code: 415, msg: "unknown format"},
		{name: "wrong kind in body", method: "POST", path: cmPath, contentType: jsonCT, body: []byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}`), code: 400, msg: "kind in the data (Secret)"},
		{name: "wrong group in body", method: "POST", path: cmPath, contentType: jsonCT, body: []byte(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"}}`), code: 400, msg: "apps/v1"},
		{name: "unknown apiVersion", method: "POST", path: cmPath, contentType: jsonCT, body: []byte(`{"apiVersion":"v9","kind":"ConfigMap","metadata":{"name":"x"}}`), code: 400, msg: "v9"},
		{name: "field of the wrong type", method: "POST", path: cmPath, contentType: jsonCT, body: cmJSON("x", `,"data":"not-a-map"`), code: 400, msg: "data"},
		{name: "strict validation, unknown field", method: "POST", path: cmPath + "?fieldValidation=Strict", contentType: jsonCT, body: cmJSON("x", `,"bogus":1`), code: 400, msg: `unknown field "bogus"`},
		{name: "strict validation, duplicate field", method: "POST", path: cmPath + "?fieldValidation=Strict", contentType: jsonCT, body: []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","name":"y"}}`), code: 400, msg: "duplicate field"},
		{name: "bad fieldValidation", method: "POST", path: cmPath + "?fieldValidation=Loose", contentType: jsonCT, body: cmJSON("x", ""), code: 400, msg: "fieldValidation"},
		{name: "bad dryRun", method: "POST", path: cmPath + "?dryRun=Some", contentType: jsonCT, body: cmJSON("x", ""), code: 400, msg: "dryRun"},
		{name: "resourceVersion on create", method: "POST", path: cmPath, contentType: jsonCT, body: curCM("x", "5"), code: 400, msg: "resourceVersion should not be set"},

		// Validation.
		{name: "invalid configmap", method: "POST", path: cmPath, contentType: jsonCT, body: []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"},"data":{"bad key!":"v"}}`),
			code: 422, msg: "Invalid value", fields: []string{"metadata.name", "data[bad key!]"}},
		{name: "invalid deployment", method: "POST", path: "/apis/apps/v1/namespaces/" + ns + "/deployments", contentType: jsonCT,
			body: []byte(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},"spec":{"replicas":-1,"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"c"}},"spec":{"containers":[{"name":"c","image":"i"}]}}}}`),
			code: 422, msg: "Deployment.apps \"d\" is invalid", fields: []string{"spec.replicas", "spec.template.metadata.labels"}},
		{name: "invalid namespace name", method: "POST", path: "/api/v1/namespaces", contentType: jsonCT, body: []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"Not.Valid"}}`), code: 422, fields: []string{"metadata.name"}},
		{name: "service with a taken clusterIP", method: "POST", path: svcPath, contentType: jsonCT, body: svcJSON("dup-ip", `{"clusterIP":"`+taken.Spec.ClusterIP+`","ports":[{"port":80}]}`),
			code: 422, msg: "already allocated", fields: []string{"spec.clusterIPs[0]"}},
		{name: "service with a clusterIP outside the range", method: "POST", path: svcPath, contentType: jsonCT, body: svcJSON("far-ip", `{"clusterIP":"192.0.2.1","ports":[{"port":80}]}`),
			code: 422, msg: "not in the valid range", fields: []string{"spec.clusterIPs[0]"}},
		{name: "service with an out-of-range nodePort", method: "POST", path: svcPath, contentType: jsonCT, body: svcJSON("low-port", `{"type":"NodePort","ports":[{"port":80,"nodePort":80}]}`),
			code: 422, msg: "not in the valid range", fields: []string{"spec.ports[0].nodePort"}},
		{name: "PUT without resourceVersion where one is required", method: "PUT", path: "/apis/coordination.k8s.io/v1/namespaces/" + ns + "/leases/lease", contentType: jsonCT,
			body: []byte(`{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"lease"},"spec":{"holderIdentity":"me"}}`),
			code: 422, msg: "must be specified for an update", fields: []string{"metadata.resourceVersion"}},
		{name: "negative scale", method: "PUT", path: "/apis/apps/v1/namespaces/" + ns + "/deployments/web/scale", contentType: jsonCT,
			body: []byte(`{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{"name":"web"},"spec":{"replicas":-3}}`), code: 422, fields: []string{"spec.replicas"}},
		{name: "scale of another name", method: "PUT", path: "/apis/apps/v1/namespaces/" + ns + "/deployments/web/scale", contentType: jsonCT,
			body: []byte(`{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{"name":"other"},"spec":{"replicas":3}}`), code: 400, msg: "does not match the name on the URL"},
		{name: "finalize of another namespace", method: "PUT", path: "/api/v1/namespaces/" + ns + "/finalize", contentType: jsonCT,
			body: []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default"},"spec":{"finalizers":[]}}`), code: 400, msg: "does not match the name on the URL"},
		{name: "binding without a target", method: "POST", path: "/api/v1/namespaces/" + ns + "/pods/unbound/binding", contentType: jsonCT,
			body: []byte(`{"apiVersion":"v1","kind":"Binding","metadata":{"name":"unbound"},"target":{}}`), code: 422, fields: []string{"target.name"}},

		// Names and namespaces.
		{name: "name mismatch between URL and body", method: "PUT", path: cmPath + "/cm", contentType: jsonCT, body: curCM("other", cm.ResourceVersion), code: 400, msg: "does not match the name on the URL"},
		{name: "namespace mismatch between URL and body", method: "POST", path: cmPath, contentType: jsonCT, body: []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"elsewhere"}}`), code: 400, msg: "does not match the namespace"},
		{name: "create in a missing namespace", method: "POST", path: "/api/v1/namespaces/no-such-ns/configmaps", contentType: jsonCT, body: cmJSON("x", ""), code: 404, msg: `namespaces "no-such-ns" not found`},
		{name: "create in a terminating namespace", method: "POST", path: "/api/v1/namespaces/" + term + "/configmaps", contentType: jsonCT, body: cmJSON("x", ""), code: 403, msg: "being terminated"},

		// Conflicts.
		{name: "duplicate create", method: "POST", path: cmPath, contentType: jsonCT, body: cmJSON("cm", ""), code: 409, msg: "already exists"},
		{name: "update from a stale resourceVersion", method: "PUT", path: cmPath + "/cm", contentType: jsonCT, body: curCM("cm", stale), code: 409, msg: "the object has been modified"},
		{name: "merge patch from a stale resourceVersion", method: "PATCH", path: cmPath + "/cm", contentType: mergeCT, body: []byte(`{"metadata":{"resourceVersion":"` + stale + `"},"data":{"v":"p"}}`), code: 409, msg: "modified"},
		{name: "delete with a stale resourceVersion precondition", method: "DELETE", path: cmPath + "/cm", contentType: jsonCT,
			body: []byte(`{"apiVersion":"v1","kind":"DeleteOptions","preconditions":{"resourceVersion":"` + stale + `"}}`), code: 409, msg: "ResourceVersion in the precondition"},
		{name: "delete with a wrong uid precondition", method: "DELETE", path: cmPath + "/cm", contentType: jsonCT,
			body: []byte(`{"apiVersion":"v1","kind":"DeleteOptions","preconditions":{"uid":"00000000-0000-0000-0000-000000000000"}}`), code: 409, msg: "UID"},

		// Patches.
		{name: "unsupported patch content type", method: "PATCH", path: cmPath + "/cm", contentType: "text/plain", body: []byte(`{}`), code: 415, msg: "text/plain"},
		{name: "JSON patch that is not a list of operations", method: "PATCH", path: cmPath + "/cm", contentType: jpCT, body: []byte(`{"op":"add"}`), code: 400, msg: "patch"},
		{name: "JSON patch on a missing path", method: "PATCH", path: cmPath + "/cm", contentType: jpCT, body: []byte(`[{"op":"replace","path":"/data/missing/deeper","value":"x"}]`), code: 422, msg: "missing"},
		{name: "JSON patch with a failing test", method: "PATCH", path: cmPath + "/cm", contentType: jpCT, body: []byte(`[{"op":"test","path":"/data/v","value":"nope"}]`), code: 422, msg: "test"},
		{name: "JSON patch changing the kind", method: "PATCH", path: cmPath + "/cm", contentType: jpCT, body: []byte(`[{"op":"replace","path":"/kind","value":"Namespace"}]`), code: 400, msg: "kind in the data (Namespace)"},
		{name: "JSON patch renaming the object", method: "PATCH", path: cmPath + "/cm", contentType: jpCT, body: []byte(`[{"op":"replace","path":"/metadata/name","value":"renamed"}]`), code: 400, msg: "does not match the name"},
		{name: "malformed merge patch", method: "PATCH", path: cmPath + "/cm", contentType: mergeCT, body: []byte(`{"data":`), code: 400, msg: "patch"},
		{name: "malformed strategic merge patch", method: "PATCH", path: cmPath + "/cm", contentType: smpCT, body: []byte(`{"data":`), code: 400, msg: "patch"},
		{name: "merge patch making the object invalid", method: "PATCH", path: cmPath + "/cm", contentType: mergeCT, body: []byte(`{"data":{"bad key!":"x"}}`), code: 422, fields: []string{"data[bad key!]"}},
		{name: "patch of a missing object", method: "PATCH", path: cmPath + "/nope", contentType: mergeCT, body: []byte(`{"data":{"a":"b"}}`), code: 404, msg: "not found"},
		{name: "apply without fieldManager", method: "PATCH", path: cmPath + "/cm", contentType: applyCT, body: cmJSON("cm", ""), code: 400, msg: "fieldManager"},
		{name: "apply of malformed YAML", method: "PATCH", path: cmPath + "/cm?fieldManager=t", contentType: applyCT, body: []byte("metadata: [\n"), code: 400, msg: "YAML"},
		{name: "apply with a field of the wrong type", method: "PATCH", path: cmPath + "/cm?fieldManager=t", contentType: applyCT, body: cmJSON("cm", `,"data":"not-a-map"`), code: 400, msg: "data"},
		{name: "apply of another kind", method: "PATCH", path: cmPath + "/cm?fieldManager=t", contentType: applyCT, body: []byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"cm"}}`), code: 400, msg: "kind in the data (Secret)"},
		{name: "apply naming another object", method: "PATCH", path: cmPath + "/cm?fieldManager=t", contentType: applyCT, body: cmJSON("other", ""), code: 400, msg: "does not match the name"},

		// List and watch parameters.
		{name: "bad labelSelector", method: "GET", path: cmPath + "?labelSelector=" + q("a in ("), code: 400, msg: "unable to parse"},
		{name: "unsupported fieldSelector", method: "GET", path: cmPath + "?fieldSelector=" + q("spec.foo=bar"), code: 400, msg: `field label not supported: spec.foo`},
		{name: "unsupported pod fieldSelector", method: "GET", path: "/api/v1/namespaces/" + ns + "/pods?fieldSelector=" + q("spec.priority=1"), code: 400, msg: "field label not supported"},
		{name: "malformed fieldSelector", method: "GET", path: cmPath + "?fieldSelector=" + q("metadata.name"), code: 400, msg: "metadata.name"},
		{name: "non-numeric limit", method: "GET", path: cmPath + "?limit=ten", code: 400, msg: "limit"},
		{name: "negative limit", method: "GET", path: cmPath + "?limit=-1", code: 400, msg: "limit"},
		{name: "non-numeric resourceVersion", method: "GET", path: cmPath + "?resourceVersion=abc", code: 400, msg: "resourceVersion"},
		{name: "unknown resourceVersionMatch", method: "GET", path: cmPath + "?resourceVersion=1&resourceVersionMatch=Newest", code: 422, fields: []string{"resourceVersionMatch"}},
		{name: "resourceVersionMatch without resourceVersion", method: "GET", path: cmPath + "?resourceVersionMatch=Exact", code: 422, fields: []string{"resourceVersionMatch"}},
		{name: "garbage continue token", method: "GET", path: cmPath + "?limit=1&continue=garbage", code: 400, msg: "continue"},
		{name: "continue with resourceVersion", method: "GET", path: cmPath + "?limit=1&resourceVersion=" + cm.ResourceVersion + "&continue=" + q(continueToken(t, cs, ns)), code: 400, msg: "continue"},
		{name: "watch with a non-numeric resourceVersion", method: "GET", path: cmPath + w + "resourceVersion=abc", code: 400, msg: "resourceVersion"},
		{name: "watch with a bad timeout", method: "GET", path: cmPath + w + "timeoutSeconds=soon", code: 400, msg: "timeoutSeconds"},
		{name: "watch with resourceVersionMatch but no sendInitialEvents", method: "GET", path: cmPath + w + "resourceVersion=1&resourceVersionMatch=NotOlderThan", code: 422, fields: []string{"resourceVersionMatch"}},
		{name: "streaming list without resourceVersionMatch", method: "GET", path: cmPath + w + "sendInitialEvents=true&allowWatchBookmarks=true", code: 422, fields: []string{"resourceVersionMatch"}},
		{name: "watch with a bad labelSelector", method: "GET", path: cmPath + w + "labelSelector=" + q("a=(b"), code: 400, msg: "unable to parse"},

		// Deletes.
		{name: "bad propagationPolicy", method: "DELETE", path: cmPath + "/cm?propagationPolicy=Sideways", code: 422, msg: "Sideways", fields: []string{"propagationPolicy"}},
		{name: "bad gracePeriodSeconds", method: "DELETE", path: cmPath + "/cm?gracePeriodSeconds=later", code: 400, msg: "gracePeriodSeconds"},
		{name: "malformed DeleteOptions body", method: "DELETE", path: cmPath + "/cm", contentType: jsonCT, body: []byte(`{"propagationPolicy":`), code: 400, msg: "DeleteOptions"},
		{name: "deletecollection with a bad labelSelector", method: "DELETE", path: cmPath + "?labelSelector=" + q("group in (tmp"), code: 400, msg: "unable to parse"},
		{name: "deletecollection with a bad fieldSelector", method: "DELETE", path: cmPath + "?fieldSelector=" + q("data.v=1"), code: 400, msg: "field label not supported"},
		{name: "delete of a missing object", method: "DELETE", path: cmPath + "/nope", code: 404, msg: "not found"},

		// Pod subresources without a node.
		{name: "logs of an unbound pod", method: "GET", path: "/api/v1/namespaces/" + ns + "/pods/unbound/log", code: 400, msg: "does not have a host assigned"},

		// Authentication and authorization.
		{name: "no credentials", client: "anon", method: "GET", path: cmPath, code: 401, msg: "Unauthorized"},
		{name: "no credentials, write", client: "anon", method: "POST", path: cmPath, contentType: jsonCT, body: cmJSON("x", ""), code: 401, msg: "Unauthorized"},
		{name: "wrong bearer token", client: "badtoken", method: "GET", path: "/api/v1/nodes", code: 401, msg: "Unauthorized"},
		{name: "join without the token", client: "anon", method: "POST", path: "/capstan/v1/join", contentType: jsonCT, body: []byte(`{"nodeName":"x","csr":""}`), code: 401, msg: "Unauthorized"},
		{name: "node updates another node", client: "node", method: "PUT", path: "/api/v1/nodes/" + n2, contentType: jsonCT, body: nodeJSON(n2), code: 403, msg: "cannot update"},
		{name: "node patches another node", client: "node", method: "PATCH", path: "/api/v1/nodes/" + n2, contentType: mergeCT, body: []byte(`{"metadata":{"labels":{"x":"y"}}}`), code: 403, msg: "cannot patch"},
		{name: "node patches another node's status", client: "node", method: "PATCH", path: "/api/v1/nodes/" + n2 + "/status", contentType: mergeCT, body: []byte(`{"status":{"phase":"Running"}}`), code: 403, msg: "nodes/status"},
		{name: "node deletes another node", client: "node", method: "DELETE", path: "/api/v1/nodes/" + n2, code: 403, msg: "cannot delete"},
		{name: "node creates another node", client: "node", method: "POST", path: "/api/v1/nodes", contentType: jsonCT, body: nodeJSON("n3-" + n1), code: 403, msg: "cannot create node"},
		{name: "node writes a configmap", client: "node", method: "POST", path: cmPath, contentType: jsonCT, body: cmJSON("x", ""), code: 403, msg: "cannot create"},
		{name: "node updates a pod bound elsewhere", client: "node", method: "PATCH", path: "/api/v1/namespaces/" + ns + "/pods/unbound", contentType: mergeCT, body: []byte(`{"metadata":{"labels":{"x":"y"}}}`), code: 403, msg: "cannot patch"},
	}
	if len(cases) < 25 {
		t.Fatalf("only %d cases", len(cases))
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := clients[tc.client]
			resp := c.doWith(t, tc.method, tc.path, tc.contentType, tc.accept, tc.body)
			checkRefusal(t, tc, resp)
		})
	}

	// The node may still do what it is allowed to, and the refusals above
	// changed nothing.
	node := clients["node"]
	if r := node.do(t, "GET", "/api/v1/nodes/"+n2, "", nil); r.code != 200 {
		t.Errorf("node reading another node: %d %s", r.code, r.body)
	}
	if r := node.do(t, "PATCH", "/api/v1/nodes/"+n1, mergeCT, []byte(`{"metadata":{"labels":{"mine":"yes"}}}`)); r.code != 200 {
		t.Errorf("node patching itself: %d %s", r.code, r.body)
	}
	n2obj, err := cs.CoreV1().Nodes().Get(ctx, n2, metav1.GetOptions{})
	if err != nil || n2obj.Labels["x"] != "" {
		t.Errorf("another node was changed by a refused request: %v %v", n2obj.Labels, err)
	}
	for _, n := range []string{ns, "default"} {
		nsObj, err := cs.CoreV1().Namespaces().Get(ctx, n, metav1.GetOptions{})
		if err != nil || len(nsObj.Spec.Finalizers) != 1 {
			t.Errorf("namespace %s finalizers changed by a refused finalize: %v %v", n, nsObj.Spec.Finalizers, err)
		}
	}
	if sc, err := cs.AppsV1().Deployments(ns).GetScale(ctx, "web", metav1.GetOptions{}); err != nil || sc.Spec.Replicas != 1 {
		t.Errorf("deployment scaled by refused requests: %v %v", sc, err)
	}
	got, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{})
	if err != nil || got.ResourceVersion != cm.ResourceVersion {
		t.Errorf("cm changed by refused requests: %v %v", got, err)
	}
	for _, n := range []string{"x", "big", "Bad_Name", "renamed"} {
		if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, n, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("configmap %q exists after refused requests: %v", n, err)
		}
	}

	// A valid deletecollection removes exactly what it selects.
	r := admin.do(t, "DELETE", cmPath+"?labelSelector="+q("group=tmp"), "", nil)
	if r.code != 200 || !bytes.Contains(r.body, []byte(`"kind":"ConfigMapList"`)) || bytes.Count(r.body, []byte(`"name":"tmp-`)) != 3 {
		t.Errorf("deletecollection: %d %s", r.code, r.body)
	}
	left, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(left.Items) != 1 || left.Items[0].Name != "cm" {
		t.Errorf("after deletecollection: %v %v", left, err)
	}

	if r := admin.do(t, "GET", "/readyz", "", nil); r.code != 200 {
		t.Errorf("readyz after bad requests: %d %s", r.code, r.body)
	}
	assertNoServerErrors(t, s)
}

// checkRefusal asserts one refused request's answer.
func checkRefusal(t *testing.T, tc badCase, resp response) {
	t.Helper()
	if resp.code >= 500 {
		t.Errorf("%s %s: server error %d: %s", tc.method, tc.path, resp.code, resp.body)
		return
	}
	if resp.code != tc.code {
		t.Errorf("%s %s: code %d, want %d: %s", tc.method, tc.path, resp.code, tc.code, truncate(resp.body))
		return
	}
	if resp.status == nil {
		t.Errorf("%s %s: %d without a Status body: %s", tc.method, tc.path, resp.code, truncate(resp.body))
		return
	}
	st := resp.status
	if int(st.Code) != tc.code || st.Status != metav1.StatusFailure {
		t.Errorf("Status code %d status %q, want %d Failure", st.Code, st.Status, tc.code)
	}
	if !strings.Contains(st.Message, tc.msg) {
		t.Errorf("message %q does not contain %q", st.Message, tc.msg)
	}
	for _, f := range tc.fields {
		found := false
		if st.Details != nil {
			for _, c := range st.Details.Causes {
				if c.Field == f {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("Status details %+v do not name field %s", st.Details, f)
		}
	}
	if tc.code == 422 && st.Reason != metav1.StatusReasonInvalid && len(tc.fields) > 0 {
		t.Errorf("422 with reason %q, want Invalid", st.Reason)
	}
}

func truncate(b []byte) string {
	if len(b) > 400 {
		return string(b[:400]) + "..."
	}
	return string(b)
}

// continueToken is a valid continue token for the configmaps of ns.
func continueToken(t *testing.T, cs kubernetes.Interface, ns string) string {
	t.Helper()
	l, err := cs.CoreV1().ConfigMaps(ns).List(context.Background(), metav1.ListOptions{Limit: 1})
	if err != nil || l.Continue == "" {
		t.Fatalf("no continue token: %v", err)
	}
	return l.Continue
}
