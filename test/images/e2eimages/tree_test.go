package e2eimages

import (
	"archive/tar"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/capstan-net/capstan/internal/ocilayout"
)

func names(entries []ocilayout.Entry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Name)
	}
	return out
}

func TestEntriesPutParentsFirst(t *testing.T) {
	tr := tree{}
	tr.add(
		ocilayout.File("usr/bin/curl", 0o755, []byte("x")),
		ocilayout.File("usr/bin-old", 0o644, nil),
		ocilayout.Dir("usr", 0o700),
		ocilayout.Symlink("bin/sh", "dash"),
	)
	got := tr.entries()
	want := []string{"bin", "bin/sh", "usr", "usr/bin", "usr/bin/curl", "usr/bin-old"}
	if !slices.Equal(names(got), want) {
		t.Fatalf("entries = %q, want %q", names(got), want)
	}
	for _, e := range got {
		switch e.Name {
		case "usr":
			if e.Mode != 0o700 {
				t.Errorf("usr mode %o, want the listed 0700", e.Mode)
			}
		case "bin", "usr/bin":
			if e.Type != tar.TypeDir || e.Mode != 0o755 {
				t.Errorf("added parent %s: type %q mode %o", e.Name, e.Type, e.Mode)
			}
		}
	}
}

func TestCopyFromKeepsModesAndLinks(t *testing.T) {
	root := fstest.MapFS{
		"bin/ping":   {Data: []byte("elf"), Mode: fs.ModeSetuid | 0o755},
		"bin/nc":     {Data: []byte("nc.openbsd"), Mode: fs.ModeSymlink | 0o777},
		"etc/conf":   {Mode: fs.ModeDir | 0o750},
		"etc/conf/a": {Data: []byte("a"), Mode: 0o600},
	}
	tr := tree{}
	if err := tr.copyFrom(root, "bin/ping", "bin/nc"); err != nil {
		t.Fatal(err)
	}
	if err := tr.copyDir(root, "etc/conf"); err != nil {
		t.Fatal(err)
	}
	if e := tr["bin/ping"]; e.Mode != 0o4755 || string(e.Data) != "elf" {
		t.Errorf("bin/ping = mode %o data %q, want setuid 04755", e.Mode, e.Data)
	}
	if e := tr["bin/nc"]; e.Type != tar.TypeSymlink || e.Linkname != "nc.openbsd" {
		t.Errorf("bin/nc = %+v, want a symlink to nc.openbsd", e)
	}
	if e := tr["etc/conf"]; e.Type != tar.TypeDir || e.Mode != 0o750 {
		t.Errorf("etc/conf = %+v, want a 0750 directory", e)
	}
	if e := tr["etc/conf/a"]; e.Mode != 0o600 {
		t.Errorf("etc/conf/a mode %o, want 0600", e.Mode)
	}
	if err := tr.copyFrom(root, "bin/missing"); err == nil || !strings.Contains(err.Error(), "bin/missing") {
		t.Errorf("copying a missing file: %v", err)
	}
}

func TestBusyboxTreeHasAppletsAndTestUsers(t *testing.T) {
	tr := busyboxTree([]byte("busybox"), []string{"sh", "wget"})
	if e := tr["bin/sh"]; e.Type != tar.TypeSymlink || e.Linkname != "busybox" {
		t.Errorf("bin/sh = %+v, want a link to busybox", e)
	}
	if e := tr["tmp"]; e.Mode != 0o1777 {
		t.Errorf("tmp mode %o, want 01777", e.Mode)
	}
	// agnhost's SupplementalGroupsPolicy tests: uid 1000 is in gid 50000.
	if !strings.Contains(string(tr["etc/group"].Data), "group-defined-in-image:x:50000:user-defined-in-image\n") ||
		!strings.Contains(string(tr["etc/passwd"].Data), "user-defined-in-image:x:1000:1000:") {
		t.Error("passwd/group lack user-defined-in-image in group-defined-in-image")
	}
}

func TestDebLayerTakesProgramsWithTheirLibraries(t *testing.T) {
	root := debianLike(t)
	root["usr/share/libc-bin/nsswitch.conf"] = file([]byte("hosts: files dns\n"))
	// An extension loaded with dlopen: only its own DT_NEEDED brings libxt.
	root["usr/lib/x86_64-linux-gnu/xtables/libxt_mark.so"] = file(elfObject(t, "", "", "libxt.so.12"))
	root["usr/lib/x86_64-linux-gnu/libxt.so.12"] = file(elfObject(t, "", ""))
	root["etc/services"] = file([]byte("http 80/tcp\n"))
	s := &staging{root: root, resolver: Resolver{Root: root, Dirs: LibDirs("x86_64-linux-gnu")}}
	tr := tree{}
	err := s.debLayer(tr, debFiles{
		Programs: []string{"usr/bin/prog"},
		Dirs:     []string{"usr/lib/x86_64-linux-gnu/xtables"},
		Files:    []string{"etc/services"},
		Copies:   map[string]string{"etc/nsswitch.conf": "usr/share/libc-bin/nsswitch.conf"},
		Links:    map[string]string{"bin/sh": "dash"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"usr/bin/prog", "lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3",
		"lib/x86_64-linux-gnu/libbar.so.2.0", "usr/lib/x86_64-linux-gnu/xtables/libxt_mark.so",
		"usr/lib/x86_64-linux-gnu/libxt.so.12", "etc/services", "etc/nsswitch.conf", "bin/sh",
	} {
		if _, ok := tr[p]; !ok {
			t.Errorf("layer lacks %s", p)
		}
	}
	for _, p := range []string{"usr/bin/other", "usr/lib/x86_64-linux-gnu/libunused.so.1", "usr/share/libc-bin/nsswitch.conf"} {
		if _, ok := tr[p]; ok {
			t.Errorf("layer has %s, which nothing needs", p)
		}
	}
	if got := string(tr["etc/nsswitch.conf"].Data); got != "hosts: files dns\n" {
		t.Errorf("etc/nsswitch.conf = %q", got)
	}
}
