package apiserver

import (
	"net/http"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/capstan-net/capstan/control/registry"
)

// reqInfo is what the URL and method say about an API request.
type reqInfo struct {
	verb      string // get list watch create update patch delete deletecollection
	gv        schema.GroupVersion
	res       *registry.Resource
	namespace string
	name      string
	sub       string
	// discovery paths and the like are not resource requests.
	resourcePath bool
}

// parsePath splits /api/v1/... and /apis/<g>/<v>/... into a reqInfo.
// It returns ok=false for paths that are not resource requests.
func parsePath(reg *registry.Registry, r *http.Request) (reqInfo, bool, error) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	var info reqInfo
	switch {
	case len(parts) >= 3 && parts[0] == "api" && parts[1] == "v1":
		info.gv = schema.GroupVersion{Version: "v1"}
		parts = parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		info.gv = schema.GroupVersion{Group: parts[1], Version: parts[2]}
		parts = parts[3:]
	default:
		return info, false, nil
	}
	watchPath := false
	if parts[0] == "watch" {
		// Deprecated /watch/ paths, still used by old clients.
		watchPath = true
		parts = parts[1:]
		if len(parts) == 0 {
			return info, false, notFoundPath(r.URL.Path)
		}
	}
	// namespaces/<ns>/<resource>... unless it is the namespaces resource itself.
	if parts[0] == "namespaces" && len(parts) >= 3 && info.gv.Group == "" {
		if parts[2] != "status" && parts[2] != "finalize" {
			info.namespace = parts[1]
			parts = parts[2:]
		}
	} else if parts[0] == "namespaces" && len(parts) >= 3 && info.gv.Group != "" {
		info.namespace = parts[1]
		parts = parts[2:]
	}
	res, ok := reg.Lookup(info.gv, parts[0])
	if !ok {
		return info, false, notFoundPath(r.URL.Path)
	}
	info.res = res
	info.resourcePath = true
	if len(parts) > 1 {
		info.name = parts[1]
	}
	if len(parts) > 2 {
		info.sub = parts[2]
		if !res.HasSubresource(info.sub) || len(parts) > 3 {
			return info, false, notFoundPath(r.URL.Path)
		}
	}
	if !res.Namespaced && info.namespace != "" {
		return info, false, notFoundPath(r.URL.Path)
	}
	if res.Name == "namespaces" && info.name != "" {
		// A namespace's own name is its "namespace" for authorization.
		info.namespace = ""
	}
	q := r.URL.Query()
	isWatch := watchPath || q.Get("watch") == "true" || q.Get("watch") == "1"
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		switch {
		case info.name == "" && isWatch:
			info.verb = "watch"
		case info.name == "":
			info.verb = "list"
		case isWatch:
			info.verb = "watch"
		default:
			info.verb = "get"
		}
	case http.MethodPost:
		info.verb = "create"
	case http.MethodPut:
		info.verb = "update"
	case http.MethodPatch:
		info.verb = "patch"
	case http.MethodDelete:
		if info.name == "" {
			info.verb = "deletecollection"
		} else {
			info.verb = "delete"
		}
	default:
		return info, false, statusFor(http.StatusMethodNotAllowed, "MethodNotAllowed", "method "+r.Method+" is not supported")
	}
	return info, true, nil
}
