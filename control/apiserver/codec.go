package apiserver

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
)

// maxBodyBytes bounds request bodies as kube-apiserver does (3 MiB).
const maxBodyBytes = 3 << 20

// restrictions tells the negotiator which transformations we serve.
type restrictions struct{}

func (restrictions) AllowsMediaTypeTransform(mimeType, mimeSubType string, gvk *schema.GroupVersionKind) bool {
	if gvk == nil {
		return true
	}
	if gvk.Group != metav1.GroupName || (gvk.Version != "v1" && gvk.Version != "v1beta1") {
		return false
	}
	switch gvk.Kind {
	case "Table", "PartialObjectMetadata", "PartialObjectMetadataList":
		return true
	}
	return false
}
func (restrictions) AllowsServerVersion(string) bool  { return false }
func (restrictions) AllowsStreamSchema(s string) bool { return s == "watch" }

var codecs = legacyscheme.Codecs

// readBody reads at most maxBodyBytes, answering 413 beyond.
func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	if err != nil {
		return nil, badRequest("read request body: %v", err)
	}
	if len(data) > maxBodyBytes {
		return nil, statusFor(http.StatusRequestEntityTooLarge, metav1.StatusReasonRequestEntityTooLarge,
			fmt.Sprintf("the request body is too large: limit is %d bytes", maxBodyBytes))
	}
	return data, nil
}

// decodeBody decodes a request body into an object of gvk, applying
// upstream defaults. Unknown fields are reported as fieldValidation asks:
// Strict fails, Warn (the default) returns warnings, Ignore drops them.
func decodeBody(r *http.Request, data []byte, gvk schema.GroupVersionKind, into runtime.Object) (runtime.Object, []string, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil, badRequest("the request body is empty")
	}
	info, err := negotiation.NegotiateInputSerializer(r, false, codecs)
	if err != nil {
		return nil, nil, err
	}
	validation := r.URL.Query().Get("fieldValidation")
	switch validation {
	case "", "Ignore", "Warn", "Strict":
	default:
		return nil, nil, badRequest("fieldValidation must be one of Ignore, Warn or Strict, not %q", validation)
	}
	dec := info.Serializer
	if validation != "Ignore" && info.StrictSerializer != nil {
		dec = info.StrictSerializer
	}
	obj, actual, err := dec.Decode(data, &gvk, into)
	var warnings []string
	if err != nil && runtime.IsStrictDecodingError(err) {
		serr, _ := runtime.AsStrictDecodingError(err)
		if validation == "Strict" {
			return nil, nil, apierrors.NewBadRequest(err.Error())
		}
		if validation != "Ignore" && serr != nil {
			for _, e := range serr.Errors() {
				warnings = append(warnings, e.Error())
			}
		}
		// Decode again leniently; the strict pass filled the object already
		// but its error means we cannot trust it.
		into = into.DeepCopyObject()
		obj, actual, err = info.Serializer.Decode(data, &gvk, into)
	}
	if err != nil {
		return nil, nil, badRequest("the body of the request was in an unknown format - accepted media types include: %s: %v", strings.Join(mediaTypes(), ", "), err)
	}
	if actual != nil && actual.GroupVersion() != gvk.GroupVersion() {
		return nil, nil, badRequest("the API version in the data (%s) does not match the expected API version (%s)", actual.GroupVersion(), gvk.GroupVersion())
	}
	if actual != nil && actual.Kind != gvk.Kind {
		return nil, nil, badRequest("the kind in the data (%s) does not match the expected kind (%s)", actual.Kind, gvk.Kind)
	}
	legacyscheme.Scheme.Default(obj)
	return obj, warnings, nil
}

func mediaTypes() []string {
	var out []string
	for _, i := range codecs.SupportedMediaTypes() {
		out = append(out, i.MediaType)
	}
	return out
}

// encodeTo writes obj in the negotiated serialization, versioned as gv.
func encodeTo(w io.Writer, info runtime.SerializerInfo, obj runtime.Object, gv schema.GroupVersion) error {
	return codecs.EncoderForVersion(info.Serializer, gv).Encode(obj, w)
}

// objectGV returns the group version of a versioned or meta object.
func objectGV(obj runtime.Object) schema.GroupVersion {
	if gvk := obj.GetObjectKind().GroupVersionKind(); !gvk.Empty() && gvk.Version != runtime.APIVersionInternal {
		return gvk.GroupVersion()
	}
	kinds, _, err := legacyscheme.Scheme.ObjectKinds(obj)
	if err == nil {
		for _, k := range kinds {
			if k.Version != runtime.APIVersionInternal {
				return k.GroupVersion()
			}
		}
	}
	return schema.GroupVersion{Version: "v1"}
}

func accessor(obj runtime.Object) metav1.Object {
	m, err := meta.Accessor(obj)
	if err != nil {
		panic(fmt.Sprintf("apiserver: %T has no ObjectMeta", obj)) // only API types reach here
	}
	return m
}
