// Package registry describes each API resource Capstan serves: its kinds,
// names, scope, subresources and the upstream strategy (defaults,
// validation, status split, field selectors) that governs writes to it.
//
// Strategies and validation are Kubernetes' own (k8s.io/kubernetes/pkg/registry),
// which work on internal types, so objects travel through the internal
// version between decoding a request and storing it.
package registry

import (
	"fmt"
	"sort"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/registry/rest"
	apistorage "k8s.io/apiserver/pkg/storage"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	"k8s.io/kubernetes/pkg/registry/apps/daemonset"
	"k8s.io/kubernetes/pkg/registry/apps/deployment"
	"k8s.io/kubernetes/pkg/registry/apps/replicaset"
	"k8s.io/kubernetes/pkg/registry/coordination/lease"
	"k8s.io/kubernetes/pkg/registry/core/configmap"
	"k8s.io/kubernetes/pkg/registry/core/endpoint"
	"k8s.io/kubernetes/pkg/registry/core/event"
	"k8s.io/kubernetes/pkg/registry/core/namespace"
	"k8s.io/kubernetes/pkg/registry/core/node"
	"k8s.io/kubernetes/pkg/registry/core/pod"
	"k8s.io/kubernetes/pkg/registry/core/secret"
	"k8s.io/kubernetes/pkg/registry/core/service"
	"k8s.io/kubernetes/pkg/registry/core/serviceaccount"
	"k8s.io/kubernetes/pkg/registry/discovery/endpointslice"
	"k8s.io/kubernetes/pkg/registry/networking/networkpolicy"
	"k8s.io/kubernetes/pkg/registry/networking/servicecidr"

	// Register the internal and v1 types, defaults and conversions of the
	// groups we serve with the upstream scheme the strategies use.
	_ "k8s.io/kubernetes/pkg/apis/apps/install"
	_ "k8s.io/kubernetes/pkg/apis/autoscaling/install"
	_ "k8s.io/kubernetes/pkg/apis/coordination/install"
	_ "k8s.io/kubernetes/pkg/apis/core/install"
	_ "k8s.io/kubernetes/pkg/apis/discovery/install"
	_ "k8s.io/kubernetes/pkg/apis/events/install"
	_ "k8s.io/kubernetes/pkg/apis/networking/install"
	_ "k8s.io/kubernetes/pkg/apis/policy/install"
)

// Strategy is what an upstream resource strategy provides for writes.
type Strategy interface {
	rest.RESTCreateStrategy
	rest.RESTUpdateStrategy
}

// AttrFunc returns the labels and selectable fields of an internal object.
type AttrFunc func(obj runtime.Object) (labels.Set, fields.Set, error)

// Resource describes one served resource.
type Resource struct {
	// GroupVersion and Name as served, e.g. apps/v1 "deployments".
	GroupVersion schema.GroupVersion
	Name         string
	Singular     string
	Kind         string
	Namespaced   bool
	ShortNames   []string
	Categories   []string
	// StorageVersion is the version objects are stored in; etcd keys use
	// StorageResource, so events.k8s.io events share core events' keys.
	StorageVersion  schema.GroupVersion
	StorageResource string

	Strategy       Strategy
	StatusStrategy rest.RESTUpdateStrategy
	// SubStrategies govern updates through other subresources (finalize).
	SubStrategies map[string]rest.RESTUpdateStrategy
	// Attrs selects fields for field selectors, on internal objects.
	Attrs AttrFunc
	// Subresources served beside the main resource ("status", "scale", ...).
	Subresources []string
	// ScaleReplicasPath etc. are implied for "scale": spec.replicas.
}

// GVK is the served kind.
func (r *Resource) GVK() schema.GroupVersionKind { return r.GroupVersion.WithKind(r.Kind) }

// GVR is the served group, version and resource.
func (r *Resource) GVR() schema.GroupVersionResource {
	return r.GroupVersion.WithResource(r.Name)
}

// GroupResource names the resource in errors.
func (r *Resource) GroupResource() schema.GroupResource {
	return schema.GroupResource{Group: r.GroupVersion.Group, Resource: r.Name}
}

// InternalGV is the hub version objects are converted through.
func (r *Resource) InternalGV() schema.GroupVersion {
	return schema.GroupVersion{Group: r.GroupVersion.Group, Version: runtime.APIVersionInternal}
}

// UpdateStrategy is the strategy for updates through sub ("" for the object).
func (r *Resource) UpdateStrategy(sub string) rest.RESTUpdateStrategy {
	if sub == "status" && r.StatusStrategy != nil {
		return r.StatusStrategy
	}
	if st, ok := r.SubStrategies[sub]; ok {
		return st
	}
	return r.Strategy
}

// HasSubresource reports whether sub is served.
func (r *Resource) HasSubresource(sub string) bool {
	for _, s := range r.Subresources {
		if s == sub {
			return true
		}
	}
	return false
}

// Verbs served on the collection and items.
func (r *Resource) Verbs() []string {
	return []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
}

// Prefix is the etcd key prefix holding the objects of ns ("" for all).
func (r *Resource) Prefix(ns string) string {
	if r.Namespaced && ns != "" {
		return "/registry/" + r.StorageResource + "/" + ns + "/"
	}
	return "/registry/" + r.StorageResource + "/"
}

// Key is the etcd key of one object.
func (r *Resource) Key(ns, name string) string {
	if r.Namespaced {
		return "/registry/" + r.StorageResource + "/" + ns + "/" + name
	}
	return "/registry/" + r.StorageResource + "/" + name
}

// NewStored returns an empty object of the stored type.
func (r *Resource) NewStored() runtime.Object {
	obj, err := legacyscheme.Scheme.New(r.StorageVersion.WithKind(r.storageKind()))
	if err != nil {
		panic(fmt.Sprintf("registry: %s not registered: %v", r.Kind, err)) // programming error in the table below
	}
	return obj
}

// NewServed returns an empty object of the served type.
func (r *Resource) NewServed() runtime.Object {
	obj, _ := legacyscheme.Scheme.New(r.GVK())
	return obj
}

// NewServedList returns an empty list of the served type.
func (r *Resource) NewServedList() runtime.Object {
	obj, _ := legacyscheme.Scheme.New(r.GroupVersion.WithKind(r.Kind + "List"))
	return obj
}

// NewInternal returns an empty internal object.
func (r *Resource) NewInternal() runtime.Object {
	obj, _ := legacyscheme.Scheme.New(r.InternalGV().WithKind(r.Kind))
	return obj
}

func (r *Resource) storageKind() string { return r.Kind }

// ToInternal converts a stored or served object to the internal version.
// The internal version is that of the object's own group: a core v1 Event
// stored for events.k8s.io becomes a core internal Event, which is the same
// type events.k8s.io's internal version uses.
func (r *Resource) ToInternal(obj runtime.Object) (runtime.Object, error) {
	out, err := legacyscheme.Scheme.ConvertToVersion(obj, runtime.InternalGroupVersioner)
	if err != nil {
		return nil, fmt.Errorf("convert %s to internal: %w", r.Kind, err)
	}
	return out, nil
}

// ToStored converts an internal object to the storage version.
func (r *Resource) ToStored(obj runtime.Object) (runtime.Object, error) {
	out, err := legacyscheme.Scheme.ConvertToVersion(obj, r.StorageVersion)
	if err != nil {
		return nil, fmt.Errorf("convert %s to %s: %w", r.Kind, r.StorageVersion, err)
	}
	return out, nil
}

// ToServed converts a stored or internal object to the served version.
func (r *Resource) ToServed(obj runtime.Object) (runtime.Object, error) {
	if kinds, _, err := legacyscheme.Scheme.ObjectKinds(obj); err == nil {
		for _, k := range kinds {
			if k == r.GVK() {
				return obj, nil
			}
		}
	}
	if r.StorageVersion.Group != r.GroupVersion.Group {
		// Versions of different groups (core v1 Events served as
		// events.k8s.io/v1) only convert through the internal version.
		in, err := r.ToInternal(obj)
		if err != nil {
			return nil, err
		}
		obj = in
	}
	out, err := legacyscheme.Scheme.ConvertToVersion(obj, r.GroupVersion)
	if err != nil {
		return nil, fmt.Errorf("convert %s to %s: %w", r.Kind, r.GroupVersion, err)
	}
	return out, nil
}

// AttrsOfStored adapts Attrs to stored objects for storage predicates.
func (r *Resource) AttrsOfStored(obj runtime.Object) (labels.Set, fields.Set, error) {
	in, err := r.ToInternal(obj)
	if err != nil {
		return nil, nil, err
	}
	return r.Attrs(in)
}

// Registry is the set of served resources.
type Registry struct {
	all    []*Resource
	byGVR  map[schema.GroupVersionResource]*Resource
	groups map[string][]string // group -> versions, preferred first
}

// Lookup finds a served resource.
func (reg *Registry) Lookup(gv schema.GroupVersion, name string) (*Resource, bool) {
	r, ok := reg.byGVR[gv.WithResource(name)]
	return r, ok
}

// All returns the served resources in a stable order.
func (reg *Registry) All() []*Resource { return reg.all }

// Groups lists served API groups (excluding the core group "") sorted.
func (reg *Registry) Groups() []string {
	var out []string
	for g := range reg.groups {
		if g != "" {
			out = append(out, g)
		}
	}
	sort.Strings(out)
	return out
}

// Versions lists the versions of group.
func (reg *Registry) Versions(group string) []string { return reg.groups[group] }

// InGroupVersion lists the resources of one group version.
func (reg *Registry) InGroupVersion(gv schema.GroupVersion) []*Resource {
	var out []*Resource
	for _, r := range reg.all {
		if r.GroupVersion == gv {
			out = append(out, r)
		}
	}
	return out
}

// ByKind finds the served resource of a kind in a group version.
func (reg *Registry) ByKind(gvk schema.GroupVersionKind) (*Resource, bool) {
	for _, r := range reg.all {
		if r.GVK() == gvk {
			return r, true
		}
	}
	return nil, false
}

var (
	coreV1        = schema.GroupVersion{Version: "v1"}
	appsV1        = schema.GroupVersion{Group: "apps", Version: "v1"}
	discoveryV1   = schema.GroupVersion{Group: "discovery.k8s.io", Version: "v1"}
	networkingV1  = schema.GroupVersion{Group: "networking.k8s.io", Version: "v1"}
	coordinationV = schema.GroupVersion{Group: "coordination.k8s.io", Version: "v1"}
	eventsV1      = schema.GroupVersion{Group: "events.k8s.io", Version: "v1"}
)

func nsAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	return apistorage.DefaultNamespaceScopedAttr(obj)
}

func clusterAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	return apistorage.DefaultClusterScopedAttr(obj)
}

// New builds the registry of everything Capstan serves.
func New() *Registry {
	all := []*Resource{
		{GroupVersion: coreV1, Name: "namespaces", Singular: "namespace", Kind: "Namespace", ShortNames: []string{"ns"},
			Strategy: namespace.Strategy, StatusStrategy: namespace.StatusStrategy, Attrs: namespace.GetAttrs,
			SubStrategies: map[string]rest.RESTUpdateStrategy{"finalize": namespace.FinalizeStrategy},
			Subresources:  []string{"status", "finalize"}},
		{GroupVersion: coreV1, Name: "pods", Singular: "pod", Kind: "Pod", Namespaced: true, ShortNames: []string{"po"}, Categories: []string{"all"},
			Strategy: pod.Strategy, StatusStrategy: pod.StatusStrategy, Attrs: pod.GetAttrs,
			Subresources: []string{"status", "binding", "log", "exec", "attach", "portforward", "eviction"}},
		{GroupVersion: coreV1, Name: "services", Singular: "service", Kind: "Service", Namespaced: true, ShortNames: []string{"svc"}, Categories: []string{"all"},
			Strategy: service.Strategy, StatusStrategy: service.StatusStrategy, Attrs: service.GetAttrs,
			Subresources: []string{"status"}},
		{GroupVersion: coreV1, Name: "endpoints", Singular: "endpoints", Kind: "Endpoints", Namespaced: true, ShortNames: []string{"ep"},
			Strategy: endpoint.Strategy, Attrs: nsAttrs},
		{GroupVersion: coreV1, Name: "nodes", Singular: "node", Kind: "Node", ShortNames: []string{"no"},
			Strategy: node.Strategy, StatusStrategy: node.StatusStrategy, Attrs: node.GetAttrs,
			Subresources: []string{"status"}},
		{GroupVersion: coreV1, Name: "configmaps", Singular: "configmap", Kind: "ConfigMap", Namespaced: true, ShortNames: []string{"cm"},
			Strategy: configmap.Strategy, Attrs: configmap.GetAttrs},
		{GroupVersion: coreV1, Name: "secrets", Singular: "secret", Kind: "Secret", Namespaced: true,
			Strategy: secret.Strategy, Attrs: secret.GetAttrs},
		{GroupVersion: coreV1, Name: "serviceaccounts", Singular: "serviceaccount", Kind: "ServiceAccount", Namespaced: true, ShortNames: []string{"sa"},
			Strategy: serviceaccount.Strategy, Attrs: nsAttrs},
		{GroupVersion: coreV1, Name: "events", Singular: "event", Kind: "Event", Namespaced: true, ShortNames: []string{"ev"},
			Strategy: event.Strategy, Attrs: event.GetAttrs},
		{GroupVersion: appsV1, Name: "deployments", Singular: "deployment", Kind: "Deployment", Namespaced: true, ShortNames: []string{"deploy"}, Categories: []string{"all"},
			Strategy: deployment.Strategy, StatusStrategy: deployment.StatusStrategy, Attrs: nsAttrs,
			Subresources: []string{"status", "scale"}},
		{GroupVersion: appsV1, Name: "replicasets", Singular: "replicaset", Kind: "ReplicaSet", Namespaced: true, ShortNames: []string{"rs"}, Categories: []string{"all"},
			Strategy: replicaset.Strategy, StatusStrategy: replicaset.StatusStrategy, Attrs: replicaset.GetAttrs,
			Subresources: []string{"status", "scale"}},
		{GroupVersion: appsV1, Name: "daemonsets", Singular: "daemonset", Kind: "DaemonSet", Namespaced: true, ShortNames: []string{"ds"}, Categories: []string{"all"},
			Strategy: daemonset.Strategy, StatusStrategy: daemonset.StatusStrategy, Attrs: nsAttrs,
			Subresources: []string{"status"}},
		{GroupVersion: discoveryV1, Name: "endpointslices", Singular: "endpointslice", Kind: "EndpointSlice", Namespaced: true,
			Strategy: endpointslice.Strategy, Attrs: nsAttrs},
		{GroupVersion: networkingV1, Name: "networkpolicies", Singular: "networkpolicy", Kind: "NetworkPolicy", Namespaced: true, ShortNames: []string{"netpol"},
			Strategy: networkpolicy.Strategy, Attrs: nsAttrs},
		{GroupVersion: networkingV1, Name: "servicecidrs", Singular: "servicecidr", Kind: "ServiceCIDR",
			Strategy: servicecidr.Strategy, StatusStrategy: servicecidr.StatusStrategy, Attrs: clusterAttrs,
			Subresources: []string{"status"}},
		{GroupVersion: coordinationV, Name: "leases", Singular: "lease", Kind: "Lease", Namespaced: true,
			Strategy: lease.Strategy, Attrs: nsAttrs},
		{GroupVersion: eventsV1, Name: "events", Singular: "event", Kind: "Event", Namespaced: true, ShortNames: []string{"ev"},
			StorageVersion: coreV1, StorageResource: "events",
			Strategy: event.Strategy, Attrs: event.GetAttrs},
	}
	reg := &Registry{byGVR: map[schema.GroupVersionResource]*Resource{}, groups: map[string][]string{}}
	for _, r := range all {
		if r.StorageVersion.Empty() {
			r.StorageVersion = r.GroupVersion
		}
		if r.StorageResource == "" {
			r.StorageResource = r.Name
		}
		reg.byGVR[r.GVR()] = r
		g := r.GroupVersion.Group
		if !contains(reg.groups[g], r.GroupVersion.Version) {
			reg.groups[g] = append(reg.groups[g], r.GroupVersion.Version)
		}
	}
	reg.all = all
	return reg
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
