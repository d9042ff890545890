// Package addons renders the cluster add-ons `capstan server` deploys at
// every start, the way k3s deploys its packaged manifests: each add-on is a
// YAML template in this directory, embedded in the binary, filled in with
// the cluster's settings and applied with server-side apply (apply.go). A
// disabled add-on's objects are removed again. Today there is one, cluster
// DNS (CoreDNS).
package addons

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/template"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// CoreDNS is the cluster DNS add-on's name (--disable-addon coredns).
const CoreDNS = "coredns"

// LabelAddon marks every object of an add-on with the add-on's name, so
// that disabling it removes what Capstan made and nothing a user made
// under the same name.
const LabelAddon = "capstan.io/addon"

//go:embed *.yaml
var manifests embed.FS

// Names are the add-ons, in the order they are applied.
func Names() []string { return []string{CoreDNS} }

// CheckNames refuses a name that is no add-on (the values of --disable-addon).
func CheckNames(names []string) error {
	for _, n := range names {
		if !slices.Contains(Names(), n) {
			return fmt.Errorf("--disable-addon %q: no such add-on (there is: %s)", n, strings.Join(Names(), ", "))
		}
	}
	return nil
}

// Render fills in add-on name's manifest with cfg and returns its objects,
// in the order they are to be applied.
func Render(name string, cfg Config) ([]*unstructured.Unstructured, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	src, err := manifests.ReadFile(name + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("add-on %q: %w", name, err)
	}
	tmpl, err := template.New(name).Option("missingkey=error").
		Funcs(template.FuncMap{"join": strings.Join}).Parse(string(src))
	if err != nil {
		return nil, fmt.Errorf("add-on %s: template: %w", name, err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, cfg); err != nil {
		return nil, fmt.Errorf("add-on %s: render: %w", name, err)
	}
	objs, err := decode(&out)
	if err != nil {
		return nil, fmt.Errorf("add-on %s: %w", name, err)
	}
	for _, o := range objs {
		if o.GetLabels()[LabelAddon] != name {
			return nil, fmt.Errorf("add-on %s: %s %s lacks the label %s=%s", name, o.GetKind(), o.GetName(), LabelAddon, name)
		}
	}
	return objs, nil
}

// decode splits a multi-document YAML stream into objects, skipping empty
// documents.
func decode(r io.Reader) ([]*unstructured.Unstructured, error) {
	d := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := d.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode manifest: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		o := &unstructured.Unstructured{Object: m}
		if o.GetAPIVersion() == "" || o.GetKind() == "" || o.GetName() == "" {
			return nil, fmt.Errorf("manifest object %d has no apiVersion, kind or name", len(objs)+1)
		}
		objs = append(objs, o)
	}
}
