package apiserver

import (
	"net/http"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/capstan-net/capstan/control/registry"
)

// serveDiscovery answers /api, /apis, /apis/<group> and the resource lists
// of each group version. Clients that ask for aggregated discovery get the
// legacy documents, which they accept as a fallback.
func (s *Server) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) == 1 && parts[0] == "api":
		writeJSON(w, http.StatusOK, &metav1.APIVersions{
			TypeMeta: metav1.TypeMeta{Kind: "APIVersions"},
			Versions: []string{"v1"},
			ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{
				{ClientCIDR: "0.0.0.0/0", ServerAddress: s.cfg.ExternalAddress},
			},
		})
	case len(parts) == 1 && parts[0] == "apis":
		list := &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}}
		for _, g := range s.reg.Groups() {
			list.Groups = append(list.Groups, s.group(g))
		}
		writeJSON(w, http.StatusOK, list)
	case len(parts) == 2 && parts[0] == "apis" && len(s.reg.Versions(parts[1])) > 0:
		g := s.group(parts[1])
		g.TypeMeta = metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}
		writeJSON(w, http.StatusOK, &g)
	case len(parts) == 2 && parts[0] == "api" && parts[1] == "v1":
		s.writeResourceList(w, schema.GroupVersion{Version: "v1"})
	case len(parts) == 3 && parts[0] == "apis" && len(s.reg.InGroupVersion(schema.GroupVersion{Group: parts[1], Version: parts[2]})) > 0:
		s.writeResourceList(w, schema.GroupVersion{Group: parts[1], Version: parts[2]})
	default:
		s.writeError(w, r, notFoundPath(r.URL.Path))
	}
}

func (s *Server) group(g string) metav1.APIGroup {
	out := metav1.APIGroup{Name: g}
	for _, v := range s.reg.Versions(g) {
		out.Versions = append(out.Versions, metav1.GroupVersionForDiscovery{GroupVersion: g + "/" + v, Version: v})
	}
	out.PreferredVersion = out.Versions[0]
	return out
}

// subresourceKinds names what each subresource serves, as upstream does.
var subresourceKinds = map[string]struct {
	group, version, kind string
	verbs                []string
}{
	"status":      {kind: "", verbs: []string{"get", "patch", "update"}},
	"scale":       {group: "autoscaling", version: "v1", kind: "Scale", verbs: []string{"get", "patch", "update"}},
	"binding":     {kind: "Binding", verbs: []string{"create"}},
	"eviction":    {group: "policy", version: "v1", kind: "Eviction", verbs: []string{"create"}},
	"log":         {kind: "Pod", verbs: []string{"get"}},
	"exec":        {kind: "PodExecOptions", verbs: []string{"create", "get"}},
	"attach":      {kind: "PodAttachOptions", verbs: []string{"create", "get"}},
	"portforward": {kind: "PodPortForwardOptions", verbs: []string{"create", "get"}},
	"finalize":    {kind: "Namespace", verbs: []string{"update"}},
}

func resourceEntries(r *registry.Resource) []metav1.APIResource {
	out := []metav1.APIResource{{
		Name: r.Name, SingularName: r.Singular, Namespaced: r.Namespaced, Kind: r.Kind,
		Verbs: r.Verbs(), ShortNames: r.ShortNames, Categories: r.Categories,
	}}
	for _, sub := range r.Subresources {
		k := subresourceKinds[sub]
		kind := k.kind
		if kind == "" {
			kind = r.Kind
		}
		out = append(out, metav1.APIResource{
			Name: r.Name + "/" + sub, Namespaced: r.Namespaced, Kind: kind,
			Group: k.group, Version: k.version, Verbs: k.verbs,
		})
	}
	return out
}

func (s *Server) writeResourceList(w http.ResponseWriter, gv schema.GroupVersion) {
	list := &metav1.APIResourceList{
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: gv.String(),
	}
	for _, r := range s.reg.InGroupVersion(gv) {
		list.APIResources = append(list.APIResources, resourceEntries(r)...)
	}
	writeJSON(w, http.StatusOK, list)
}
