package apiserver

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/control/registry"
)

func TestParsePath(t *testing.T) {
	reg := registry.New()
	cases := []struct {
		method, path             string
		verb, res, ns, name, sub string
		wantErr                  int
	}{
		{"GET", "/api/v1/pods", "list", "pods", "", "", "", 0},
		{"GET", "/api/v1/pods?watch=true", "watch", "pods", "", "", "", 0},
		{"GET", "/api/v1/namespaces/x/pods/p", "get", "pods", "x", "p", "", 0},
		{"POST", "/api/v1/namespaces/x/pods/p/binding", "create", "pods", "x", "p", "binding", 0},
		{"DELETE", "/api/v1/namespaces/x/pods", "deletecollection", "pods", "x", "", "", 0},
		{"GET", "/api/v1/namespaces/x", "get", "namespaces", "", "x", "", 0},
		{"PUT", "/api/v1/namespaces/x/finalize", "update", "namespaces", "", "x", "finalize", 0},
		{"PATCH", "/apis/apps/v1/namespaces/d/deployments/web/scale", "patch", "deployments", "d", "web", "scale", 0},
		{"GET", "/api/v1/watch/namespaces/x/pods", "watch", "pods", "x", "", "", 0},
		{"GET", "/apis/apps/v1/widgets", "", "", "", "", "", 404},
		{"GET", "/api/v1/namespaces/x/pods/p/nonsense", "", "", "", "", "", 404},
		{"GET", "/api/v1/namespaces/x/nodes/n", "", "", "", "", "", 404},
	}
	for _, c := range cases {
		r := httptest.NewRequest(c.method, c.path, nil)
		ri, ok, err := parsePath(reg, r)
		if c.wantErr != 0 {
			se, isStatus := err.(*apierrors.StatusError)
			if !isStatus || int(se.Status().Code) != c.wantErr {
				t.Errorf("%s %s: err %v, want %d", c.method, c.path, err, c.wantErr)
			}
			continue
		}
		if err != nil || !ok {
			t.Errorf("%s %s: ok=%v err=%v", c.method, c.path, ok, err)
			continue
		}
		if ri.verb != c.verb || ri.res.Name != c.res || ri.namespace != c.ns || ri.name != c.name || ri.sub != c.sub {
			t.Errorf("%s %s: got verb=%s res=%s ns=%s name=%s sub=%s", c.method, c.path, ri.verb, ri.res.Name, ri.namespace, ri.name, ri.sub)
		}
	}
}

func TestDecodeBodyFieldValidation(t *testing.T) {
	gvk := corev1.SchemeGroupVersion.WithKind("ConfigMap")
	body := []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"bogus":1}`)
	req := func(q string) *http.Request {
		r := httptest.NewRequest("POST", "/api/v1/namespaces/d/configmaps"+q, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		return r
	}
	if _, _, err := decodeBody(req("?fieldValidation=Strict"), body, gvk, &corev1.ConfigMap{}); !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("Strict: %v, want 400 naming the field", err)
	}
	obj, warns, err := decodeBody(req(""), body, gvk, &corev1.ConfigMap{})
	if err != nil || len(warns) != 1 || obj.(*corev1.ConfigMap).Name != "a" {
		t.Fatalf("Warn: obj=%v warns=%v err=%v", obj, warns, err)
	}
	if _, warns, err := decodeBody(req("?fieldValidation=Ignore"), body, gvk, &corev1.ConfigMap{}); err != nil || len(warns) != 0 {
		t.Fatalf("Ignore: warns=%v err=%v", warns, err)
	}
	if _, _, err := decodeBody(req("?fieldValidation=Loud"), body, gvk, &corev1.ConfigMap{}); !apierrors.IsBadRequest(err) {
		t.Fatalf("bad fieldValidation value: %v", err)
	}
	wrong := []byte(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a"}}`)
	if _, _, err := decodeBody(req(""), wrong, gvk, &corev1.ConfigMap{}); !apierrors.IsBadRequest(err) {
		t.Fatalf("wrong kind: %v", err)
	}
	if _, _, err := decodeBody(req(""), []byte("{not json"), gvk, &corev1.ConfigMap{}); !apierrors.IsBadRequest(err) {
		t.Fatalf("malformed: %v", err)
	}
	if _, _, err := decodeBody(req(""), nil, gvk, &corev1.ConfigMap{}); !apierrors.IsBadRequest(err) {
		t.Fatalf("empty: %v", err)
	}
}

func TestReadBodyLimit(t *testing.T) {
	r := httptest.NewRequest("POST", "/", bytes.NewReader(make([]byte, maxBodyBytes+1)))
	_, err := readBody(r)
	se, ok := err.(*apierrors.StatusError)
	if !ok || se.Status().Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %v, want 413", err)
	}
	r = httptest.NewRequest("POST", "/", bytes.NewReader(make([]byte, maxBodyBytes)))
	if _, err := readBody(r); err != nil {
		t.Fatalf("body at the limit: %v", err)
	}
}

func TestApplyJSONPatchTypes(t *testing.T) {
	orig := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"a":"1"}},"spec":{"containers":[{"name":"c","image":"i1"},{"name":"d","image":"i2"}]}}`)
	cases := []struct {
		pt    types.PatchType
		patch string
		want  string
		err   bool
	}{
		{types.MergePatchType, `{"metadata":{"labels":{"b":"2"}}}`, `"b":"2"`, false},
		{types.JSONPatchType, `[{"op":"replace","path":"/metadata/labels/a","value":"9"}]`, `"a":"9"`, false},
		{types.JSONPatchType, `[{"op":"remove","path":"/metadata/nothere"}]`, ``, true},
		{types.JSONPatchType, `{"not":"a list"}`, ``, true},
		// Strategic merge keeps the other container (merge key: name).
		{types.StrategicMergePatchType, `{"spec":{"containers":[{"name":"c","image":"i9"}]}}`, `"image":"i2"`, false},
		{types.MergePatchType, `{"spec":{"containers":[{"name":"c","image":"i9"}]}}`, `"containers":[{"image":"i9","name":"c"}]`, false},
	}
	for _, c := range cases {
		out, err := applyJSONPatch(c.pt, orig, []byte(c.patch), &corev1.Pod{})
		if c.err {
			if err == nil {
				t.Errorf("%s %s: no error", c.pt, c.patch)
			}
			continue
		}
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s %s: %s, %v; want %s", c.pt, c.patch, out, err, c.want)
		}
	}
}
