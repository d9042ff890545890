package apiserver

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	"sigs.k8s.io/yaml"

	"github.com/capstan-net/capstan/control/registry"
	"github.com/capstan-net/capstan/control/storage"
)

func patchType(r *http.Request) (types.PatchType, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return "", statusFor(http.StatusUnsupportedMediaType, metav1.StatusReasonUnsupportedMediaType, "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml")
	}
	switch pt := types.PatchType(mt); pt {
	case types.JSONPatchType, types.MergePatchType, types.StrategicMergePatchType, types.ApplyYAMLPatchType:
		return pt, nil
	}
	return "", statusFor(http.StatusUnsupportedMediaType, metav1.StatusReasonUnsupportedMediaType, fmt.Sprintf("the body of the request was in an unknown format (%s) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml", mt))
}

func (s *Server) patch(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, bool, error) {
	pt, err := patchType(r)
	if err != nil {
		return nil, false, err
	}
	patch, err := readBody(r)
	if err != nil {
		return nil, false, err
	}
	if len(patch) == 0 {
		return nil, false, badRequest("the request body is empty")
	}
	res := ri.res
	if pt == types.ApplyYAMLPatchType {
		return s.apply(ctx, r, ri, patch)
	}
	out, err := s.doUpdate(ctx, r, ri, updateOpts{}, func(ctx context.Context, old runtime.Object) (runtime.Object, error) {
		served, err := res.ToServed(old)
		if err != nil {
			return nil, err
		}
		var buf bytesBuffer
		if err := encodeTo(&buf, jsonInfo(), served, res.GroupVersion); err != nil {
			return nil, err
		}
		patched, err := applyJSONPatch(pt, buf.Bytes(), patch, res.NewServed())
		if err != nil {
			return nil, err
		}
		jr := r.Clone(ctx)
		jr.Header.Set("Content-Type", runtime.ContentTypeJSON)
		obj, warns, err := decodeBody(jr, patched, res.GVK(), res.NewServed())
		if err != nil {
			return nil, err
		}
		addWarnings(ctx, warns)
		return res.ToInternal(obj)
	})
	return out, false, err
}

func applyJSONPatch(pt types.PatchType, original, patch []byte, schemaObj runtime.Object) ([]byte, error) {
	switch pt {
	case types.JSONPatchType:
		p, err := jsonpatch.DecodePatch(patch)
		if err != nil {
			return nil, badRequest("the server rejected our request due to an error in our request: invalid JSON patch: %v", err)
		}
		out, err := p.Apply(original)
		if err != nil {
			return nil, statusFor(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, fmt.Sprintf("the server rejected our request due to an error in our request: %v", err))
		}
		return out, nil
	case types.MergePatchType:
		out, err := jsonpatch.MergePatch(original, patch)
		if err != nil {
			return nil, badRequest("invalid merge patch: %v", err)
		}
		return out, nil
	default:
		out, err := strategicpatch.StrategicMergePatch(original, patch, schemaObj)
		if err != nil {
			return nil, badRequest("invalid strategic merge patch: %v", err)
		}
		return out, nil
	}
}

// apply is server-side apply: the field manager merges the configuration
// into the live object, creating it if it does not exist.
func (s *Server) apply(ctx context.Context, r *http.Request, ri reqInfo, patch []byte) (runtime.Object, bool, error) {
	res := ri.res
	if r.URL.Query().Get("fieldManager") == "" {
		return nil, false, apierrors.NewBadRequest("PATCH with apply requires a fieldManager query parameter")
	}
	cfg := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(patch, &cfg.Object); err != nil {
		return nil, false, badRequest("error decoding YAML: %v", err)
	}
	if cfg.GetAPIVersion() != res.GroupVersion.String() {
		return nil, false, badRequest("the API version in the data (%s) does not match the expected API version (%s)", cfg.GetAPIVersion(), res.GroupVersion)
	}
	if ri.sub != "scale" && cfg.GetKind() != res.Kind {
		return nil, false, badRequest("the kind in the data (%s) does not match the expected kind (%s)", cfg.GetKind(), res.Kind)
	}
	if cfg.GetName() != ri.name {
		return nil, false, badRequest("the name of the object (%s) does not match the name on the URL (%s)", cfg.GetName(), ri.name)
	}
	force := r.URL.Query().Get("force") == "true"
	fm, err := s.fieldManager(res, ri.sub)
	if err != nil {
		return nil, false, err
	}
	manager := managerName(r)
	out, err := s.doUpdate(ctx, r, ri, updateOpts{managed: true}, func(ctx context.Context, old runtime.Object) (runtime.Object, error) {
		obj, err := applyConfig(fm, old, cfg, manager, force)
		if err != nil {
			return nil, err
		}
		// Apply is unconditional unless the configuration names a version.
		if cfg.GetResourceVersion() == "" {
			accessor(obj).SetResourceVersion(accessor(old).GetResourceVersion())
		}
		return obj, nil
	})
	if errors.Is(err, storage.ErrNotFound) && ri.sub == "" {
		live := res.NewInternal()
		lm := accessor(live)
		lm.SetName(ri.name)
		lm.SetNamespace(ri.namespace)
		obj, err := applyConfig(fm, live, cfg, manager, force)
		if err != nil {
			return nil, false, err
		}
		if obj, err = withDefaults(res, obj); err != nil {
			return nil, false, err
		}
		created, err := s.createInternal(ctx, r, ri, obj, func() error { return nil })
		return created, err == nil, err
	}
	return out, false, err
}

// applyConfig merges an apply configuration into live. Conflicts come
// back as 409s; any other failure is the configuration not fitting the
// schema (a field of the wrong type), which is the client's error.
func applyConfig(fm *managedfields.FieldManager, live runtime.Object, cfg *unstructured.Unstructured, manager string, force bool) (runtime.Object, error) {
	obj, err := fm.Apply(live, cfg.DeepCopy(), manager, force)
	if err != nil {
		var st apierrors.APIStatus
		if errors.As(err, &st) {
			return nil, err
		}
		return nil, badRequest("%v", err)
	}
	return obj, nil
}

// withDefaults applies upstream defaults to an internal object by a round
// trip through the served version, as decoding a request body would.
func withDefaults(res *registry.Resource, in runtime.Object) (runtime.Object, error) {
	served, err := res.ToServed(in)
	if err != nil {
		return nil, err
	}
	served = served.DeepCopyObject()
	legacyscheme.Scheme.Default(served)
	return res.ToInternal(served)
}
