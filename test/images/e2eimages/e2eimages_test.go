package e2eimages

import (
	"slices"
	"strings"
	"testing"

	"github.com/capstan-net/capstan/internal/ocilayout"
)

// allLayers is a built layer of every name the catalog uses, each distinct.
func allLayers(t *testing.T, skip ...string) builtLayers {
	t.Helper()
	l := builtLayers{}
	for _, name := range []string{"base", "tools", "agnhost", "kitten", "nautilus", "nginx", "netfilter",
		"pause", "regression", "sample-apiserver", "etcd", "nonewprivs"} {
		if slices.Contains(skip, name) {
			continue
		}
		layer, err := ocilayout.NewLayer(ocilayout.File(name, 0o644, []byte(name)))
		if err != nil {
			t.Fatal(err)
		}
		l[name] = layer
	}
	return l
}

func TestCatalogNamesImagesAsUpstream(t *testing.T) {
	imgs := catalog(allLayers(t))
	var refs []string
	for _, img := range imgs {
		refs = append(refs, img.Ref)
		for i, l := range img.Layers {
			if l.Blob == nil {
				t.Errorf("%s: layer %d was never built", img.Ref, i)
			}
		}
		if img.Config.Labels[`org.opencontainers.image.ref.name`] != img.Ref {
			t.Errorf("%s: no label of its own name, so images of one content would share an ID", img.Ref)
		}
	}
	// The names test/utils/image gives at v1.37.2; a new Kubernetes
	// version changes some, and this list with it.
	want := []string{
		"registry.k8s.io/build-image/distroless-iptables:v0.9.9",
		"registry.k8s.io/e2e-test-images/agnhost:2.55",
		"registry.k8s.io/e2e-test-images/agnhost:2.66.1",
		"registry.k8s.io/e2e-test-images/busybox:1.37.0-2",
		"registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1",
		"registry.k8s.io/e2e-test-images/kitten:1.8",
		"registry.k8s.io/e2e-test-images/nautilus:1.8",
		"registry.k8s.io/e2e-test-images/nginx:1.27.0-2",
		"registry.k8s.io/e2e-test-images/nginx:1.28.0-2",
		"registry.k8s.io/e2e-test-images/nonewprivs:1.4",
		"registry.k8s.io/e2e-test-images/nonroot:1.5",
		"registry.k8s.io/e2e-test-images/regression-issue-74839:1.5",
		"registry.k8s.io/e2e-test-images/sample-apiserver:1.29.2",
		"registry.k8s.io/etcd:3.7.0-0",
		"registry.k8s.io/pause:3.10.2",
	}
	slices.Sort(refs)
	if !slices.Equal(refs, want) {
		t.Errorf("refs:\n got %q\nwant %q", refs, want)
	}
}

func TestCatalogLeavesOutWhatMustFailToPull(t *testing.T) {
	for _, img := range catalog(allLayers(t)) {
		if strings.Contains(img.Ref, "invalid") || strings.HasPrefix(img.Ref, "gcr.io/k8s-authenticated-test/") {
			t.Errorf("catalog has %s, which the tests expect not to pull", img.Ref)
		}
	}
}

func TestCatalogSkipsOptionalImagesNotBuilt(t *testing.T) {
	for _, img := range catalog(allLayers(t, "etcd", "sample-apiserver")) {
		if strings.Contains(img.Ref, "etcd") || strings.Contains(img.Ref, "sample-apiserver") {
			t.Errorf("catalog has %s, whose program was not given", img.Ref)
		}
	}
}

func TestAgnhostImagesRunAgnhost(t *testing.T) {
	for _, img := range catalog(allLayers(t)) {
		name := img.Ref[strings.LastIndex(img.Ref, "/")+1:]
		switch {
		case strings.HasPrefix(name, "agnhost:"):
			if !slices.Equal(img.Config.Entrypoint, []string{"/agnhost"}) || !slices.Equal(img.Config.Cmd, []string{"pause"}) {
				t.Errorf("%s: entrypoint %q cmd %q, want /agnhost pause", img.Ref, img.Config.Entrypoint, img.Config.Cmd)
			}
		case strings.HasPrefix(name, "kitten:"), strings.HasPrefix(name, "nautilus:"):
			if !slices.Equal(img.Config.Cmd, []string{"test-webserver"}) || len(img.Layers) != 4 {
				t.Errorf("%s: cmd %q with %d layers, want agnhost's 3 layers and its picture serving", img.Ref, img.Config.Cmd, len(img.Layers))
			}
		}
	}
}
