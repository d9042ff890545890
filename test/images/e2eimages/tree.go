package e2eimages

import (
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/capstan-net/capstan/internal/ocilayout"
)

// tree is a layer's contents being assembled: entries by path. Later
// additions replace earlier ones at the same path, as an upper layer does.
type tree map[string]ocilayout.Entry

// add puts entries in the tree.
func (t tree) add(entries ...ocilayout.Entry) {
	for _, e := range entries {
		t[e.Name] = e
	}
}

// copyFrom copies paths from root into the tree as they are there: regular
// files with their content and permission bits, symlinks with their
// targets, directories empty (their contents are copied only if listed).
func (t tree) copyFrom(root fs.ReadLinkFS, paths ...string) error {
	for _, p := range paths {
		fi, err := root.Lstat(p)
		if err != nil {
			return fmt.Errorf("copy %s: %w", p, err)
		}
		switch m := fi.Mode(); {
		case m.IsDir():
			t.add(ocilayout.Dir(p, unixMode(m)))
		case m&fs.ModeSymlink != 0:
			target, err := root.ReadLink(p)
			if err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
			t.add(ocilayout.Symlink(p, target))
		case m.IsRegular():
			data, err := fs.ReadFile(root, p)
			if err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
			t.add(ocilayout.File(p, unixMode(m), data))
		default:
			return fmt.Errorf("copy %s: unsupported file type %s", p, m.Type())
		}
	}
	return nil
}

// copyDir copies dir and everything under it from root.
func (t tree) copyDir(root fs.ReadLinkFS, dir string) error {
	return fs.WalkDir(root, dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("copy %s: %w", dir, err)
		}
		return t.copyFrom(root, p)
	})
}

// entries returns the tree's entries sorted by path, so that every
// directory comes before what it holds, with a directory entry (mode 0755)
// added for each parent the tree lacks: the runtime would otherwise make
// them with modes of its own choosing.
func (t tree) entries() []ocilayout.Entry {
	all := maps.Clone(t)
	for p := range t {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = ocilayout.Dir(d, 0o755)
			}
		}
	}
	names := slices.SortedFunc(maps.Keys(all), comparePaths)
	out := make([]ocilayout.Entry, 0, len(names))
	for _, n := range names {
		out = append(out, all[n])
	}
	return out
}

// comparePaths orders paths component by component, so "a/b" sorts right
// after "a" and before "a-b".
func comparePaths(a, b string) int {
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
}

// unixMode turns a FileMode's permission and special bits into the
// st_mode bits tar headers carry.
func unixMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
