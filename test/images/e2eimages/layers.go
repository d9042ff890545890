package e2eimages

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/capstan-net/capstan/internal/ocilayout"
)

// debFiles names what a layer takes from the unpacked Debian packages.
type debFiles struct {
	// Programs are copied with everything they need (Resolver.Closure).
	Programs []string
	// Dirs are copied whole, with what their ELF files need.
	Dirs []string
	// Files are copied as they are (data, configuration).
	Files []string
	// Copies are files copied to another path, destination to source:
	// what a package's maintainer scripts would install (unpacking does not
	// run them).
	Copies map[string]string
	// Links are symlinks to add, path to target: what maintainer scripts
	// would make (update-alternatives).
	Links map[string]string
}

// debLayer copies what want names from the unpacked packages into t.
func (s *staging) debLayer(t tree, want debFiles) error {
	progs := slices.Clone(want.Programs)
	for _, d := range want.Dirs {
		if err := t.copyDir(s.root, d); err != nil {
			return err
		}
		for p, e := range t {
			if strings.HasPrefix(p, d+"/") && e.Type == tar.TypeReg && strings.HasSuffix(p, ".so") {
				progs = append(progs, p)
			}
		}
	}
	closure, err := s.resolver.Closure(progs...)
	if err != nil {
		return err
	}
	if err := t.copyFrom(s.root, closure...); err != nil {
		return err
	}
	if err := t.copyFrom(s.root, want.Files...); err != nil {
		return err
	}
	for dst, src := range want.Copies {
		data, err := fs.ReadFile(s.root, src)
		if err != nil {
			return fmt.Errorf("copy %s to %s: %w", src, dst, err)
		}
		t.add(ocilayout.File(dst, 0o644, data))
	}
	for p, target := range want.Links {
		t.add(ocilayout.Symlink(p, target))
	}
	return nil
}

// busyboxApplets lists the applets of the static busybox at path, by
// running it (it runs on the build machine: it is static and of its
// architecture).
func busyboxApplets(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, bin, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", bin, err)
	}
	var applets []string
	for name := range strings.FieldsSeq(string(out)) {
		if name != "busybox" && !strings.Contains(name, "/") && name != "." && name != ".." {
			applets = append(applets, name)
		}
	}
	if !slices.Contains(applets, "sh") {
		return nil, fmt.Errorf("%s has no sh applet", bin)
	}
	slices.Sort(applets)
	return applets, nil
}

// busyboxTree is the base every image with a shell starts from, as
// upstream's busybox image is: busybox in /bin with a symlink per applet,
// the users and groups of the images (root, nobody, and those the tests
// run as), and the usual empty directories.
func busyboxTree(busybox []byte, applets []string) tree {
	t := tree{}
	t.add(ocilayout.File("bin/busybox", 0o755, busybox))
	for _, a := range applets {
		t.add(ocilayout.Symlink("bin/"+a, "busybox"))
	}
	t.add(
		ocilayout.File("etc/passwd", 0o644, []byte(passwd)),
		ocilayout.File("etc/group", 0o644, []byte(group)),
		ocilayout.Dir("root", 0o700),
		ocilayout.Dir("home", 0o755),
		ocilayout.Dir("tmp", 0o1777),
		ocilayout.Dir("var/tmp", 0o1777),
		ocilayout.Dir("run", 0o755),
		ocilayout.Dir("proc", 0o555),
		ocilayout.Dir("sys", 0o555),
		ocilayout.Dir("dev", 0o755),
	)
	return t
}

// passwd and group: root, www-data (the web server's workers), nobody,
// and user-defined-in-image (1000) in group-defined-in-image (50000),
// whom agnhost's SupplementalGroupsPolicy tests expect in the image.
const (
	passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"www-data:x:33:33:www-data:/var/www:/bin/false\n" +
		"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group = "root:x:0:\n" +
		"www-data:x:33:\n" +
		"user-defined-in-image:x:1000:\n" +
		"group-defined-in-image:x:50000:user-defined-in-image\n" +
		"nogroup:x:65534:\n"
)

// nginxConf serves /usr/share/nginx/html on port 80 in the foreground,
// logging to the container's output: what the tests expect of upstream's
// nginx image (the official one), here with Debian's nginx.
const nginxConf = `user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr notice;

events {
	worker_connections 1024;
}

http {
	include /etc/nginx/mime.types;
	default_type application/octet-stream;
	access_log /dev/stdout;
	sendfile on;
	keepalive_timeout 65;

	server {
		listen 80;
		listen [::]:80;
		server_name localhost;
		location / {
			root /usr/share/nginx/html;
			index index.html index.htm;
		}
	}
}
`

// nginxTree adds to t the configuration and the directories nginx writes.
func nginxTree(t tree) {
	t.add(
		ocilayout.File("etc/nginx/nginx.conf", 0o644, []byte(nginxConf)),
		ocilayout.Dir("var/lib/nginx", 0o755),
		ocilayout.Dir("var/log/nginx", 0o755),
		ocilayout.Symlink("var/log/nginx/access.log", "/dev/stdout"),
		ocilayout.Symlink("var/log/nginx/error.log", "/dev/stderr"),
		ocilayout.Dir("var/cache/nginx", 0o755),
	)
}

// layer turns a tree into a layer.
func layer(t tree) (ocilayout.Layer, error) {
	return ocilayout.NewLayer(t.entries()...)
}

// byteSize is a human size for logs.
func byteSize(n int) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// busyboxPath is where busybox-static installs busybox (Debian 13 puts
// programs under /usr).
const busyboxPath = "usr/bin/busybox"

// layers builds every layer of the catalog.
func (s *staging) layers(ctx context.Context, dir, triplet string, opts Options) (builtLayers, error) {
	busybox, err := fs.ReadFile(s.root, busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("busybox-static: %w", err)
	}
	applets, err := busyboxApplets(ctx, filepath.Join(dir, busyboxPath))
	if err != nil {
		return nil, err
	}
	trees := map[string]tree{"base": busyboxTree(busybox, applets)}
	if err := s.debLayer(trees["base"], shellFiles()); err != nil {
		return nil, fmt.Errorf("layer base: %w", err)
	}
	for name, want := range map[string]debFiles{
		"tools": toolsFiles(), "nginx": nginxFiles(), "netfilter": netfilterFiles(triplet),
	} {
		t := tree{}
		if err := s.debLayer(t, want); err != nil {
			return nil, fmt.Errorf("layer %s: %w", name, err)
		}
		trees[name] = t
	}
	nginxTree(trees["nginx"])
	if trees["agnhost"], err = agnhostTree(opts); err != nil {
		return nil, err
	}
	for _, name := range []string{"kitten", "nautilus"} {
		if trees[name], err = pictureTree(opts.KubeSrc, name); err != nil {
			return nil, err
		}
	}
	for name, st := range staticLayers(opts) {
		if st.binary == "" {
			continue // optional, left out
		}
		data, err := readStatic(st.binary)
		if err != nil {
			return nil, err
		}
		trees[name] = tree{}
		trees[name].add(ocilayout.File(st.file, st.mode, data), ocilayout.Dir("tmp", 0o1777))
	}
	out := builtLayers{}
	for name, t := range trees {
		l, err := layer(t)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", name, err)
		}
		opts.Log.Info("built layer", "layer", name, "files", len(t), "gzip", byteSize(len(l.Blob)))
		out[name] = l
	}
	return out, nil
}

// staticProgram is a layer of one statically linked program.
type staticProgram struct {
	file   string // its path in the image
	binary string // its path here; empty leaves the layer out
	mode   int64
}

// staticLayers are the layers of one program each, by layer name.
func staticLayers(opts Options) map[string]staticProgram {
	return map[string]staticProgram{
		"pause":            {"pause", opts.Pause, 0o755},
		"regression":       {"regression-issue-74839", opts.Regression, 0o755},
		"sample-apiserver": {"sample-apiserver", opts.SampleAPIServer, 0o755},
		"etcd":             {"usr/local/bin/etcd", opts.Etcd, 0o755},
		// Set-user-ID root, as upstream's: the test checks that
		// allowPrivilegeEscalation=false keeps it from taking effect.
		"nonewprivs": {"usr/local/bin/nnp", opts.Nonewprivs, 0o4755},
	}
}

// agnhostTree is agnhost's own layer, laid out as upstream's Dockerfile
// does: the program and its second name (the entrypoint tests run
// /agnhost-2), CoreDNS (the DNS tests serve a Corefile with /coredns),
// the porter TLS pair and the upload directory.
func agnhostTree(opts Options) (tree, error) {
	t := tree{}
	for name, bin := range map[string]string{"agnhost": opts.Agnhost, "coredns": opts.CoreDNS} {
		data, err := readStatic(bin)
		if err != nil {
			return nil, err
		}
		t.add(ocilayout.File(name, 0o755, data))
	}
	for _, name := range []string{"localhost.crt", "localhost.key"} {
		data, err := os.ReadFile(filepath.Join(opts.KubeSrc, "test/images/agnhost/porter", name))
		if err != nil {
			return nil, fmt.Errorf("agnhost porter %s: %w", name, err)
		}
		t.add(ocilayout.File(name, 0o644, data))
	}
	t.add(ocilayout.Symlink("agnhost-2", "agnhost"), ocilayout.Dir("uploads", 0o755))
	return t, nil
}

// pictureTree is the layer of kitten or nautilus: agnhost's test-webserver
// serves its picture and data.json from the root.
func pictureTree(kubeSrc, name string) (tree, error) {
	t := tree{}
	html := filepath.Join(kubeSrc, "test/images", name, "html")
	for _, f := range []string{name + ".jpg", "data.json"} {
		data, err := os.ReadFile(filepath.Join(html, f))
		if err != nil {
			return nil, fmt.Errorf("%s image: %w", name, err)
		}
		t.add(ocilayout.File(f, 0o644, data))
	}
	return t, nil
}

// readStatic reads a program that must be statically linked: its image
// holds nothing to link it against.
func readStatic(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s is dynamically linked (build it with CGO_ENABLED=0)", path)
		}
	}
	return data, nil
}
