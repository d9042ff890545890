package api_test

import (
	"strings"
	"testing"

	openapi_v2 "github.com/google/gnostic-models/openapiv2"
	"google.golang.org/protobuf/proto"
	"k8s.io/client-go/rest"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// The non-resource endpoints: health and version without credentials,
// metrics and OpenAPI (protobuf v2, as kubectl asks for it) with them.
func TestServerEndpoints(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{EtcdEndpoints: servertest.EnvEtcd()})
	admin := newRawClient(t, s.Config)
	anonCfg := rest.AnonymousClientConfig(s.Config)
	anon := newRawClient(t, anonCfg)

	for _, p := range []string{"/healthz", "/livez", "/readyz"} {
		if r := anon.doWith(t, "GET", p, "", "*/*", nil); r.code != 200 || string(r.body) != "ok" {
			t.Errorf("anonymous GET %s: %d %q", p, r.code, r.body)
		}
	}
	if r := anon.do(t, "GET", "/version", "", nil); r.code != 200 || !strings.Contains(string(r.body), `"gitVersion"`) {
		t.Errorf("anonymous GET /version: %d %s", r.code, r.body)
	}
	for _, p := range []string{"/metrics", "/openapi/v2", "/api", "/apis/apps/v1"} {
		if r := anon.do(t, "GET", p, "", nil); r.code != 401 {
			t.Errorf("anonymous GET %s: %d, want 401", p, r.code)
		}
	}

	// Generate a request so the counter has something to count.
	admin.do(t, "GET", "/api/v1/namespaces/default", "", nil)
	m := admin.doWith(t, "GET", "/metrics", "", "text/plain", nil)
	if m.code != 200 || !strings.Contains(string(m.body), `apiserver_request_total{code="200",group="",resource="namespaces",verb="get"}`) {
		t.Errorf("/metrics: %d, no request counter for the namespace get:\n%.2000s", m.code, m.body)
	}

	r := admin.doWith(t, "GET", "/openapi/v2", "", "application/com.github.proto-openapi.spec.v2@v1.0+protobuf", nil)
	if r.code != 200 {
		t.Fatalf("/openapi/v2 protobuf: %d", r.code)
	}
	doc := &openapi_v2.Document{}
	if err := proto.Unmarshal(r.body, doc); err != nil {
		t.Fatalf("/openapi/v2 is not a protobuf OpenAPI document: %v", err)
	}
	var hasPod, hasPatch bool
	for _, d := range doc.GetDefinitions().GetAdditionalProperties() {
		if d.Name == "io.k8s.api.core.v1.Pod" {
			hasPod = true
		}
	}
	for _, p := range doc.GetPaths().GetPath() {
		if p.Name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}" && p.GetValue().GetPatch() != nil {
			hasPatch = true
		}
	}
	if !hasPod || !hasPatch {
		t.Errorf("openapi v2: Pod definition %v, deployment PATCH path %v", hasPod, hasPatch)
	}
	v3 := admin.do(t, "GET", "/openapi/v3", "", nil)
	if v3.code != 200 || !strings.Contains(string(v3.body), `"apis/apps/v1"`) {
		t.Errorf("/openapi/v3 discovery: %d %.300s", v3.code, v3.body)
	}
}
