package addons

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
)

// fieldManager owns the fields the server applies, as for its bootstrap
// objects. Applying with force takes them back at every start: an add-on
// edited by hand returns to its manifest, as k3s's do.
const fieldManager = "capstan-server"

// Applier writes add-ons' objects through the API.
type Applier struct {
	client dynamic.Interface
	mapper meta.ResettableRESTMapper
	log    *slog.Logger
}

// NewApplier reaches the API server with rc.
func NewApplier(rc *rest.Config, log *slog.Logger) (*Applier, error) {
	client, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return &Applier{client: client, mapper: mapper, log: log}, nil
}

// Sync applies every add-on not in disabled and removes the ones in it.
func (a *Applier) Sync(ctx context.Context, cfg Config, disabled []string) error {
	for _, name := range Names() {
		objs, err := Render(name, cfg)
		if err != nil {
			return err
		}
		if slices.Contains(disabled, name) {
			err = a.remove(ctx, name, objs)
		} else {
			err = a.apply(ctx, name, objs)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// apply applies objs in order with server-side apply.
func (a *Applier) apply(ctx context.Context, name string, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		ri, err := a.resource(o)
		if err != nil {
			return fmt.Errorf("add-on %s: %w", name, err)
		}
		data, err := o.MarshalJSON()
		if err != nil {
			return fmt.Errorf("add-on %s: encode %s: %w", name, describe(o), err)
		}
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: fieldManager, Force: ptr.To(true)}); err != nil {
			return fmt.Errorf("add-on %s: apply %s: %w", name, describe(o), err)
		}
	}
	a.log.Info("add-on applied", "addon", name, "objects", len(objs))
	return nil
}

// remove deletes, last first, the objects of objs that carry the add-on's
// label; one without it is someone else's and stays.
func (a *Applier) remove(ctx context.Context, name string, objs []*unstructured.Unstructured) error {
	removed := 0
	for i := len(objs) - 1; i >= 0; i-- {
		o := objs[i]
		ri, err := a.resource(o)
		if err != nil {
			return fmt.Errorf("add-on %s: %w", name, err)
		}
		live, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("add-on %s: get %s: %w", name, describe(o), err)
		}
		if live.GetLabels()[LabelAddon] != name {
			a.log.Info("disabled add-on: object not made by capstan left alone", "addon", name, "object", describe(o))
			continue
		}
		err = ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("add-on %s: delete %s: %w", name, describe(o), err)
		}
		removed++
	}
	if removed > 0 {
		a.log.Info("disabled add-on removed", "addon", name, "objects", removed)
	}
	return nil
}

// resource is the API endpoint of o's kind, in o's namespace for a
// namespaced one. A kind the API server does not serve yet (it may still be
// starting) drops the cached discovery, so the next try asks again.
func (a *Applier) resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		if meta.IsNoMatchError(err) {
			a.mapper.Reset()
		}
		return nil, fmt.Errorf("%s: %w", describe(o), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if o.GetNamespace() == "" {
			return nil, fmt.Errorf("%s: namespaced, but the manifest gives no namespace", describe(o))
		}
		return a.client.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return a.client.Resource(m.Resource), nil
}

func describe(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return o.GetKind() + " " + ns + "/" + o.GetName()
	}
	return o.GetKind() + " " + o.GetName()
}

// Permanent tells whether err is one trying again cannot mend: the API
// server refused what the manifest asks for (an address already taken, a
// field that cannot change).
func Permanent(err error) bool {
	return apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)
}
