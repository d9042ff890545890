package apiserver

import (
	"fmt"
	"net/http"
	"strings"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/managedfields"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/kube-openapi/pkg/builder"
	"k8s.io/kube-openapi/pkg/builder3"
	"k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/handler"
	"k8s.io/kube-openapi/pkg/handler3"
	"k8s.io/kube-openapi/pkg/spec3"
	"k8s.io/kube-openapi/pkg/util"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	generatedopenapi "k8s.io/kubernetes/pkg/generated/openapi"

	"github.com/capstan-net/capstan/control/registry"
)

// openAPI holds the served documents and the SSA type converter, which
// are derived from upstream's generated OpenAPI definitions.
type openAPI struct {
	v2            *handler.OpenAPIService
	v3            *handler3.OpenAPIService
	typeConverter managedfields.TypeConverter
}

func openAPIConfig() *common.Config {
	namer := openapinamer.NewDefinitionNamer(legacyscheme.Scheme)
	return &common.Config{
		ProtocolList:      []string{"https"},
		Info:              &spec.Info{InfoProps: spec.InfoProps{Title: "Capstan", Version: "v1.37.2"}},
		GetDefinitions:    generatedopenapi.GetOpenAPIDefinitions,
		GetDefinitionName: namer.GetDefinitionName,
		GetOperationIDAndTagsFromRoute: func(r common.Route) (string, []string, error) {
			return r.OperationName(), nil, nil
		},
		DefaultResponse: &spec.Response{ResponseProps: spec.ResponseProps{Description: "Default Response."}},
	}
}

func openAPIV3Config() *common.OpenAPIV3Config {
	c := openAPIConfig()
	return &common.OpenAPIV3Config{
		Info:                           c.Info,
		GetDefinitions:                 c.GetDefinitions,
		GetDefinitionName:              c.GetDefinitionName,
		GetOperationIDAndTagsFromRoute: c.GetOperationIDAndTagsFromRoute,
		DefaultResponse:                &spec3.Response{ResponseProps: spec3.ResponseProps{Description: "Default Response."}},
	}
}

func buildOpenAPI(reg *registry.Registry) (*openAPI, error) {
	var containers []common.RouteContainer
	byGV := map[string][]common.RouteContainer{}
	var names []string
	for _, r := range reg.All() {
		c := routesFor(r)
		containers = append(containers, c)
		byGV[gvPath(r)] = append(byGV[gvPath(r)], c)
		names = append(names, util.GetCanonicalTypeName(r.NewServed()))
	}
	v2spec, err := builder.BuildOpenAPISpecFromRoutes(containers, openAPIConfig())
	if err != nil {
		return nil, fmt.Errorf("build openapi v2: %w", err)
	}
	out := &openAPI{v2: handler.NewOpenAPIService(v2spec), v3: handler3.NewOpenAPIService()}
	for path, cs := range byGV {
		doc, err := builder3.BuildOpenAPISpecFromRoutes(cs, openAPIV3Config())
		if err != nil {
			return nil, fmt.Errorf("build openapi v3 %s: %w", path, err)
		}
		out.v3.UpdateGroupVersion(path, doc)
	}
	defs, err := builder3.BuildOpenAPIDefinitionsForResources(openAPIV3Config(), names...)
	if err != nil {
		return nil, fmt.Errorf("build openapi models: %w", err)
	}
	if out.typeConverter, err = managedfields.NewTypeConverter(defs, false); err != nil {
		return nil, fmt.Errorf("type converter: %w", err)
	}
	return out, nil
}

func (o *openAPI) register(mux *http.ServeMux) error {
	o.v2.RegisterOpenAPIVersionedService("/openapi/v2", mux)
	return o.v3.RegisterOpenAPIV3VersionedService("/openapi/v3", prefixMux{mux})
}

// prefixMux adapts a ServeMux to the prefix registration handler3 wants.
type prefixMux struct{ *http.ServeMux }

func (m prefixMux) HandlePrefix(prefix string, h http.Handler) {
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	m.Handle(prefix, h)
}

func gvPath(r *registry.Resource) string {
	if r.GroupVersion.Group == "" {
		return "api/" + r.GroupVersion.Version
	}
	return "apis/" + r.GroupVersion.Group + "/" + r.GroupVersion.Version
}

// route implements kube-openapi's common.Route for one operation.
type route struct {
	method, path, op, desc string
	params                 []common.Parameter
	body, resp             interface{}
	meta                   map[string]interface{}
}

func (r *route) Method() string                 { return r.method }
func (r *route) Path() string                   { return r.path }
func (r *route) OperationName() string          { return r.op }
func (r *route) Parameters() []common.Parameter { return r.params }
func (r *route) Description() string            { return r.desc }
func (r *route) Consumes() []string             { return consumesFor(r.method) }
func (r *route) Produces() []string {
	return []string{"application/json", "application/yaml", "application/vnd.kubernetes.protobuf"}
}
func (r *route) Metadata() map[string]interface{}                 { return r.meta }
func (r *route) RequestPayloadSample() interface{}                { return r.body }
func (r *route) ResponsePayloadSample() interface{}               { return r.resp }
func (r *route) StatusCodeResponses() []common.StatusCodeResponse { return nil }

func consumesFor(method string) []string {
	if method == http.MethodPatch {
		return []string{"application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"}
	}
	return []string{"*/*"}
}

type param struct {
	name, desc, typ string
	kind            common.ParameterKind
	required        bool
}

func (p param) Name() string               { return p.name }
func (p param) Description() string        { return p.desc }
func (p param) Required() bool             { return p.required }
func (p param) Kind() common.ParameterKind { return p.kind }
func (p param) DataType() string           { return p.typ }
func (p param) AllowMultiple() bool        { return false }

type container struct {
	root   string
	routes []common.Route
}

func (c *container) RootPath() string                   { return c.root }
func (c *container) PathParameters() []common.Parameter { return nil }
func (c *container) Routes() []common.Route             { return c.routes }

func q(name, typ, desc string) param {
	return param{name: name, typ: typ, desc: desc, kind: common.QueryParameterKind}
}

func pathParam(name string) param {
	return param{name: name, typ: "string", desc: name + " of the object", kind: common.PathParameterKind, required: true}
}

var (
	writeParams = []common.Parameter{
		q("dryRun", "string", "When present, indicates that modifications should not be persisted."),
		q("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes."),
		q("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."),
		q("pretty", "string", "If 'true', then the output is pretty printed."),
	}
	listQueryParams = []common.Parameter{
		q("allowWatchBookmarks", "boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
		q("continue", "string", "The continue option should be set when retrieving more results from the server."),
		q("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields."),
		q("labelSelector", "string", "A selector to restrict the list of returned objects by their labels."),
		q("limit", "integer", "limit is a maximum number of responses to return for a list call."),
		q("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
		q("resourceVersionMatch", "string", "resourceVersionMatch determines how resourceVersion is applied to list calls."),
		q("sendInitialEvents", "boolean", "sendInitialEvents=true may be set together with watch=true."),
		q("timeoutSeconds", "integer", "Timeout for the list/watch call."),
		q("watch", "boolean", "Watch for changes to the described resources."),
		q("pretty", "string", "If 'true', then the output is pretty printed."),
	}
	deleteParams = []common.Parameter{
		q("dryRun", "string", "When present, indicates that modifications should not be persisted."),
		q("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted."),
		q("propagationPolicy", "string", "Whether and how garbage collection will be performed: Orphan, Background or Foreground."),
		q("pretty", "string", "If 'true', then the output is pretty printed."),
	}
)

func body() param {
	return param{name: "body", typ: "object", kind: common.BodyParameterKind, required: true}
}

// routesFor lists the operations of one resource the way kube-apiserver
// names them, with the GVK extensions kubectl looks for.
func routesFor(r *registry.Resource) *container {
	gv := r.GroupVersion
	group := gv.Group
	if group == "" {
		group = "core"
	}
	opGV := camel(strings.ReplaceAll(strings.TrimSuffix(group, ".k8s.io"), ".", " ")) + camel(gv.Version)
	scope := ""
	base := "/" + gvPath(r)
	var pp []common.Parameter
	if r.Namespaced {
		scope = "Namespaced"
		base += "/namespaces/{namespace}"
		pp = append(pp, pathParam("namespace"))
	}
	coll := base + "/" + r.Name
	item := coll + "/{name}"
	ipp := append(append([]common.Parameter{}, pp...), pathParam("name"))
	obj, list := r.NewServed(), r.NewServedList()
	gvk := map[string]interface{}{"group": gv.Group, "version": gv.Version, "kind": r.Kind}
	ext := func(action string) map[string]interface{} {
		return map[string]interface{}{"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}
	}
	k := r.Kind
	with := func(a []common.Parameter, b ...common.Parameter) []common.Parameter {
		return append(append([]common.Parameter{}, a...), b...)
	}
	routes := []common.Route{
		&route{method: "GET", path: coll, op: "list" + opGV + scope + k, desc: "list or watch objects of kind " + k, params: with(pp, listQueryParams...), resp: list, meta: ext("list")},
		&route{method: "POST", path: coll, op: "create" + opGV + scope + k, desc: "create " + k, params: with(with(pp, writeParams...), body()), body: obj, resp: obj, meta: ext("post")},
		&route{method: "DELETE", path: coll, op: "deletecollection" + opGV + scope + k, desc: "delete collection of " + k, params: with(pp, deleteParams...), resp: &metav1.Status{}, meta: ext("deletecollection")},
		&route{method: "GET", path: item, op: "read" + opGV + scope + k, desc: "read the specified " + k, params: ipp, resp: obj, meta: ext("get")},
		&route{method: "PUT", path: item, op: "replace" + opGV + scope + k, desc: "replace the specified " + k, params: with(with(ipp, writeParams...), body()), body: obj, resp: obj, meta: ext("put")},
		&route{method: "PATCH", path: item, op: "patch" + opGV + scope + k, desc: "partially update the specified " + k, params: with(with(ipp, writeParams...), q("force", "boolean", "Force is going to \"force\" Apply requests."), body()), body: &metav1.Patch{}, resp: obj, meta: ext("patch")},
		&route{method: "DELETE", path: item, op: "delete" + opGV + scope + k, desc: "delete " + k, params: with(ipp, deleteParams...), resp: &metav1.Status{}, meta: ext("delete")},
	}
	for _, sub := range r.Subresources {
		subPath := item + "/" + sub
		name := camel(sub)
		switch sub {
		case "status":
			routes = append(routes,
				&route{method: "GET", path: subPath, op: "read" + opGV + scope + k + name, desc: "read status of the specified " + k, params: ipp, resp: obj, meta: ext("get")},
				&route{method: "PUT", path: subPath, op: "replace" + opGV + scope + k + name, desc: "replace status of the specified " + k, params: with(with(ipp, writeParams...), body()), body: obj, resp: obj, meta: ext("put")},
				&route{method: "PATCH", path: subPath, op: "patch" + opGV + scope + k + name, desc: "partially update status of the specified " + k, params: with(with(ipp, writeParams...), body()), body: &metav1.Patch{}, resp: obj, meta: ext("patch")})
		case "scale":
			sgvk := map[string]interface{}{"group": "autoscaling", "version": "v1", "kind": "Scale"}
			se := func(a string) map[string]interface{} {
				return map[string]interface{}{"x-kubernetes-action": a, "x-kubernetes-group-version-kind": sgvk}
			}
			routes = append(routes,
				&route{method: "GET", path: subPath, op: "read" + opGV + scope + k + name, desc: "read scale of the specified " + k, params: ipp, resp: &autoscalingv1.Scale{}, meta: se("get")},
				&route{method: "PUT", path: subPath, op: "replace" + opGV + scope + k + name, desc: "replace scale of the specified " + k, params: with(with(ipp, writeParams...), body()), body: &autoscalingv1.Scale{}, resp: &autoscalingv1.Scale{}, meta: se("put")},
				&route{method: "PATCH", path: subPath, op: "patch" + opGV + scope + k + name, desc: "partially update scale of the specified " + k, params: with(with(ipp, writeParams...), body()), body: &metav1.Patch{}, resp: &autoscalingv1.Scale{}, meta: se("patch")})
		}
	}
	return &container{root: coll, routes: routes}
}

func camel(s string) string {
	var b strings.Builder
	for _, w := range strings.Fields(s) {
		b.WriteString(strings.ToUpper(w[:1]) + w[1:])
	}
	return b.String()
}
