// Package e2eimages builds, without a registry, the container images the
// upstream Kubernetes e2e suite (k8s.io/kubernetes/test/e2e at v1.37.2) runs
// in its [Conformance] and [sig-network] tests, under their upstream names,
// into one OCI image-layout archive: every node of `capstan up --images`
// imports it, and the test pods, whose pull policy is IfNotPresent, find
// them there.
//
// Upstream builds most of these images on Alpine; here their programs come
// from Debian's packages (apt-get download, dpkg-deb -x), each with the
// shared libraries its ELF DT_NEEDED entries name, recursively, and the
// dynamic loader. Images share layers:
//
//	base       Debian 13's busybox-static in /bin, a symlink per applet, bash
//	           as sh (see shellFiles); users and groups
//	tools      curl, nc, dig, nslookup, host, ip, ss,
//	           iperf, socat, getent, nsenter and their libraries (what
//	           agnhost's Dockerfile adds to Alpine with apk)
//	agnhost    /agnhost (unmodified, static), /agnhost-2, /coredns (the
//	           upstream CoreDNS of tools/coredns), porter's TLS pair, /uploads
//	nginx      Debian's nginx serving /usr/share/nginx/html on port 80
//	netfilter  conntrack and iptables (nft) with their xtables modules
//	one each   the static programs of pause (Capstan's), nonewprivs,
//	           regression-issue-74839, sample-apiserver and etcd
//	           (tools/e2e/build.sh builds them from upstream's sources)
//
// Images a test must fail to pull (the invalid registry, the private
// gcr.io/k8s-authenticated-test one) are left out on purpose, and so are
// those only tests outside [Conformance] and [sig-network] use.
package e2eimages

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	imageutils "k8s.io/kubernetes/test/utils/image"

	"github.com/capstan-net/capstan/internal/ocilayout"
)

// Options are the inputs of Build.
type Options struct {
	// Debs is the directory downloaded .debs are kept in (bin/debs).
	Debs string
	// Agnhost is the static agnhost binary (tools/e2e/build.sh).
	Agnhost string
	// CoreDNS is the static coredns binary (tools/coredns/build.sh).
	CoreDNS string
	// Pause is Capstan's static pause program (cmd/capstan-pause).
	Pause string
	// Regression, SampleAPIServer and Etcd are the static programs of the
	// images of the same names (tools/e2e/build.sh); an empty one leaves
	// its image out.
	Regression, SampleAPIServer, Etcd string
	// Nonewprivs is the static nnp program of the nonewprivs image
	// (tools/e2e/build.sh); empty leaves the image out.
	Nonewprivs string
	// KubeSrc is the k8s.io/kubernetes module's directory, for the data
	// files of test/images (agnhost's porter TLS pair, kitten, nautilus).
	KubeSrc string
	// Log receives progress; nil discards it.
	Log *slog.Logger
}

// envPath is every image's PATH.
const envPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// debRoots are the Debian packages the images are made from; their
// dependencies are downloaded with them.
func debRoots() []string {
	return []string{
		"bash", "curl", "netcat-openbsd", "bind9-dnsutils", "bind9-host",
		"iproute2", "iperf", "socat", "libc-bin", "util-linux", "netbase",
		"nginx", "nginx-common", "conntrack", "iptables",
	}
}

// busyboxSuite is the Debian release busybox-static is taken from: Debian
// 12's (1.35) wget crashes (SIGSEGV) when given -T, the timeout the
// Services specs' serve-hostname checks pass it; 1.37 of Debian 13 does not.
// The package is static, so it mixes with Debian 12's others.
const busyboxSuite = "trixie"

// toolsFiles are what agnhost's tests run inside it, from Debian; upstream
// installs them with apk (bind-tools curl netcat-openbsd iproute2 iperf
// bash util-linux-misc socat) on Alpine, whose busybox gives the rest.
func toolsFiles() debFiles {
	return debFiles{
		Programs: []string{
			"usr/bin/curl", "bin/nc.openbsd", "usr/bin/dig", "usr/bin/nslookup",
			"usr/bin/host", "bin/ip", "bin/ss", "usr/bin/iperf", "usr/bin/socat",
			"usr/bin/getent", "usr/bin/nsenter",
		},
		Dirs:  []string{"etc/iproute2"},
		Files: []string{"etc/services", "etc/protocols"},
		// glibc without nsswitch.conf asks DNS before /etc/hosts and stops
		// at its answer; Debian installs this default when it configures
		// libc-bin.
		Copies: map[string]string{"etc/nsswitch.conf": "usr/share/libc-bin/nsswitch.conf"},
		Links: map[string]string{
			"bin/nc":              "nc.openbsd",
			"usr/local/bin/iperf": "/usr/bin/iperf",
		},
	}
}

// shellFiles is the base's sh: bash, not busybox's ash. Debian 12's
// busybox (1.35) ash drops environment variables whose names are not shell
// identifiers (data-1, 1-key) and runs its applets ahead of the programs on
// PATH (`ip` would be busybox's, not iproute2's); upstream's busybox 1.37
// passes such variables on, which the Secret and ConfigMap env tests
// check with `sh -c env`. bash passes them on and searches PATH.
func shellFiles() debFiles {
	return debFiles{
		Programs: []string{"bin/bash"},
		Links:    map[string]string{"bin/sh": "bash"},
	}
}

// nginxFiles is Debian's nginx with the page the official image serves.
func nginxFiles() debFiles {
	return debFiles{
		Programs: []string{"usr/sbin/nginx"},
		Files:    []string{"etc/nginx/mime.types", "usr/share/nginx/html/index.html"},
	}
}

// netfilterFiles are conntrack and the nft flavour of iptables, whose
// extensions are loaded with dlopen from the xtables directory.
func netfilterFiles(triplet string) debFiles {
	links := map[string]string{}
	for _, name := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		links["usr/sbin/"+name] = "xtables-nft-multi"
	}
	return debFiles{
		Programs: []string{"usr/sbin/conntrack", "usr/sbin/xtables-nft-multi"},
		Dirs:     []string{"usr/lib/" + triplet + "/xtables"},
		Links:    links,
	}
}

// staging is the unpacked Debian packages.
type staging struct {
	root     fs.ReadLinkFS
	resolver Resolver
}

// WriteFile builds the archive into path, through a temporary file renamed
// into place, creating path's directory if needed.
func WriteFile(ctx context.Context, opts Options, path string) ([]string, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create output dir: %w", err)
	}
	f, err := os.CreateTemp(dir, ".e2e-images-*.tar")
	if err != nil {
		return nil, fmt.Errorf("create archive: %w", err)
	}
	defer os.Remove(f.Name())
	refs, err := Build(ctx, opts, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return nil, fmt.Errorf("chmod archive: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write archive: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return nil, fmt.Errorf("rename archive: %w", err)
	}
	return refs, nil
}

// Build writes the archive to w and returns the images' references.
func Build(ctx context.Context, opts Options, w io.Writer) ([]string, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	triplet, err := Triplet(runtime.GOARCH)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "capstan-e2e-debs-")
	if err != nil {
		return nil, fmt.Errorf("create staging dir: %w", err)
	}
	defer os.RemoveAll(dir)
	deb := Debian{Cache: opts.Debs, Log: opts.Log}
	if _, err := deb.Unpack(ctx, debRoots(), dir); err != nil {
		return nil, err
	}
	bb := Debian{Cache: opts.Debs, Suite: busyboxSuite, Log: opts.Log}
	if _, err := bb.Unpack(ctx, []string{"busybox-static"}, dir); err != nil {
		return nil, err
	}
	root, ok := os.DirFS(dir).(fs.ReadLinkFS)
	if !ok {
		return nil, fmt.Errorf("staging dir %s: file system cannot read symlinks", dir)
	}
	s := &staging{root: root, resolver: Resolver{Root: root, Dirs: LibDirs(triplet)}}
	layers, err := s.layers(ctx, dir, triplet, opts)
	if err != nil {
		return nil, err
	}
	var archive ocilayout.Archive
	var refs []string
	for _, img := range catalog(layers) {
		img.Config.Env = append([]string{envPath}, img.Config.Env...)
		if img.Config.WorkingDir == "" {
			img.Config.WorkingDir = "/"
		}
		desc, err := archive.Add(img)
		if err != nil {
			return nil, err
		}
		opts.Log.Info("built image", "ref", img.Ref, "manifest", desc.Digest)
		refs = append(refs, img.Ref)
	}
	if err := archive.Write(w); err != nil {
		return nil, err
	}
	return refs, nil
}

// builtLayers are the layers images are made of, by name.
type builtLayers map[string]ocilayout.Layer

// Ref is the upstream reference of an e2e image, as the suite names it
// (k8s.io/kubernetes/test/utils/image, without KUBE_TEST_REPO's remapping):
// a pod finds the image only under exactly that name.
func Ref(id imageutils.ImageID) string {
	cfg := imageutils.GetOriginalImageConfigs()[id]
	return cfg.GetE2EImage()
}

// catalog is every image: its layers, bottom first, and its configuration.
// The images of optional layers that were not built are left out.
func catalog(l builtLayers) []ocilayout.Image {
	agnhostConfig := ocispec.ImageConfig{
		Entrypoint: []string{"/agnhost"},
		Cmd:        []string{"pause"},
		ExposedPorts: map[string]struct{}{
			"80/tcp": {}, "8080/tcp": {}, "8081/tcp": {}, "9376/tcp": {}, "5000/tcp": {},
		},
	}
	webserver := agnhostConfig
	webserver.Cmd = []string{"test-webserver"}
	nginx := ocispec.ImageConfig{
		Cmd:          []string{"nginx", "-g", "daemon off;"},
		ExposedPorts: map[string]struct{}{"80/tcp": {}},
		StopSignal:   "SIGQUIT",
	}
	agnhost := []ocilayout.Layer{l["base"], l["tools"], l["agnhost"]}
	imgs := []ocilayout.Image{
		{Ref: Ref(imageutils.Agnhost), Layers: agnhost, Config: agnhostConfig},
		// The previous agnhost is the same program: the tests only need
		// an image of another name to roll pods over to.
		{Ref: Ref(imageutils.AgnhostPrev), Layers: agnhost, Config: agnhostConfig},
		{Ref: Ref(imageutils.Kitten), Layers: append(agnhost[:3:3], l["kitten"]), Config: webserver},
		{Ref: Ref(imageutils.Nautilus), Layers: append(agnhost[:3:3], l["nautilus"]), Config: webserver},
		{Ref: Ref(imageutils.BusyBox), Layers: []ocilayout.Layer{l["base"]}, Config: ocispec.ImageConfig{Cmd: []string{"sh"}}},
		{Ref: Ref(imageutils.NonRoot), Layers: []ocilayout.Layer{l["base"]}, Config: ocispec.ImageConfig{User: "1234", Cmd: []string{"sh"}}},
		{Ref: Ref(imageutils.GlibcDnsTesting), Layers: []ocilayout.Layer{l["base"], l["tools"]}, Config: ocispec.ImageConfig{Cmd: []string{"bash"}}},
		{Ref: Ref(imageutils.Nginx), Layers: []ocilayout.Layer{l["base"], l["nginx"]}, Config: nginx},
		{Ref: Ref(imageutils.NginxNew), Layers: []ocilayout.Layer{l["base"], l["nginx"]}, Config: nginx},
		{Ref: Ref(imageutils.DistrolessIptables), Layers: []ocilayout.Layer{l["base"], l["netfilter"]}, Config: ocispec.ImageConfig{Cmd: []string{"sh"}}},
		{Ref: Ref(imageutils.Pause), Layers: []ocilayout.Layer{l["pause"]}, Config: ocispec.ImageConfig{Entrypoint: []string{"/pause"}}},
	}
	if _, ok := l["nonewprivs"]; ok {
		imgs = append(imgs, ocilayout.Image{Ref: Ref(imageutils.Nonewprivs),
			Layers: []ocilayout.Layer{l["base"], l["nonewprivs"]}, Config: ocispec.ImageConfig{Cmd: []string{"nnp"}}})
	}
	for _, st := range []struct{ ref, layer, entry string }{
		{Ref(imageutils.RegressionIssue74839), "regression", "/regression-issue-74839"},
		{Ref(imageutils.APIServer), "sample-apiserver", "/sample-apiserver"},
		{Ref(imageutils.Etcd), "etcd", ""}, // the test names /usr/local/bin/etcd
	} {
		if _, ok := l[st.layer]; !ok {
			continue
		}
		img := ocilayout.Image{Ref: st.ref, Layers: []ocilayout.Layer{l[st.layer]}}
		if st.entry != "" {
			img.Config.Entrypoint = []string{st.entry}
		}
		imgs = append(imgs, img)
	}
	for i := range imgs {
		// Images of the same content get distinct configs, so containerd
		// and the kubelet see distinct image IDs, as they would upstream.
		imgs[i].Config.Labels = map[string]string{ocispec.AnnotationRefName: imgs[i].Ref}
		imgs[i].CreatedBy = "capstan test/images/e2eimages"
	}
	return imgs
}
