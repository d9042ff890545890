package e2eimages

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
)

// maxLinks bounds symlink chains, as the kernel's ELOOP does.
const maxLinks = 40

// Triplet is Debian's multiarch directory name for a Go architecture.
func Triplet(goarch string) (string, error) {
	switch goarch {
	case "amd64":
		return "x86_64-linux-gnu", nil
	case "arm64":
		return "aarch64-linux-gnu", nil
	}
	return "", fmt.Errorf("no Debian multiarch triplet known for GOARCH %q", goarch)
}

// LibDirs are the directories the dynamic loader searches when an object
// has no RUNPATH entry that holds a library: Debian's multiarch directories
// first, as its glibc does. The image has no ld.so.cache, so these are all
// the loader will look in.
func LibDirs(triplet string) []string {
	return []string{"lib/" + triplet, "usr/lib/" + triplet, "lib", "usr/lib"}
}

// Resolver finds the files that programs of a root file system need to run:
// the symlinks on their way, their dynamic loader and, recursively, the
// shared libraries their DT_NEEDED entries name. Paths are slash-separated,
// relative to the root, without a leading slash.
type Resolver struct {
	// Root is the extracted file system; it must support symlinks.
	Root fs.ReadLinkFS
	// Dirs are the library search directories (see LibDirs).
	Dirs []string
}

// Closure returns every path that paths need, themselves included: the
// symlinks leading to each file and each file they end at, and, for ELF
// files, the interpreter and needed libraries, recursively. The result is
// sorted and has no duplicates.
func (r Resolver) Closure(paths ...string) ([]string, error) {
	seen := map[string]bool{}
	queue := slices.Clone(paths)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		final, links, err := r.resolve(p)
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			seen[l] = true
		}
		if seen[final] {
			continue
		}
		seen[final] = true
		deps, err := r.needs(final)
		if err != nil {
			return nil, err
		}
		queue = append(queue, deps...)
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// needs returns what the file at p, if it is a dynamically linked ELF
// object, needs loaded: its interpreter and the libraries it names.
func (r Resolver) needs(p string) ([]string, error) {
	data, err := fs.ReadFile(r.Root, p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return nil, nil // a script or data file
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parse ELF %s: %w", p, err)
	}
	defer f.Close()
	var out []string
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		interp := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(interp, 0); err != nil {
			return nil, fmt.Errorf("read interpreter of %s: %w", p, err)
		}
		out = append(out, strings.TrimPrefix(string(bytes.TrimRight(interp, "\x00")), "/"))
	}
	if f.SectionByType(elf.SHT_DYNAMIC) == nil {
		return out, nil // static
	}
	needed, err := f.DynString(elf.DT_NEEDED)
	if err != nil {
		return nil, fmt.Errorf("read DT_NEEDED of %s: %w", p, err)
	}
	runpath, err := r.runpath(f, p)
	if err != nil {
		return nil, err
	}
	for _, lib := range needed {
		found, err := r.findLib(lib, runpath)
		if err != nil {
			return nil, fmt.Errorf("%s needs %s: %w", p, lib, err)
		}
		out = append(out, found)
	}
	return out, nil
}

// runpath returns the directories of an object's DT_RUNPATH (or, lacking
// it, DT_RPATH), with $ORIGIN expanded to the object's own directory.
func (r Resolver) runpath(f *elf.File, p string) ([]string, error) {
	var dirs []string
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		vals, err := f.DynString(tag)
		if err != nil {
			return nil, fmt.Errorf("read %s of %s: %w", tag, p, err)
		}
		for _, v := range vals {
			for d := range strings.SplitSeq(v, ":") {
				d = strings.ReplaceAll(d, "${ORIGIN}", "/"+path.Dir(p))
				d = strings.ReplaceAll(d, "$ORIGIN", "/"+path.Dir(p))
				if d = strings.TrimPrefix(path.Clean(d), "/"); d != "" && d != "." {
					dirs = append(dirs, d)
				}
			}
		}
		if len(dirs) > 0 {
			break
		}
	}
	return dirs, nil
}

// findLib finds a library by its soname in the runpath, then in r.Dirs.
// A name with a slash is a path.
func (r Resolver) findLib(name string, runpath []string) (string, error) {
	if strings.Contains(name, "/") {
		return strings.TrimPrefix(path.Clean(name), "/"), nil
	}
	dirs := append(slices.Clone(runpath), r.Dirs...)
	for _, d := range dirs {
		p := path.Join(d, name)
		if _, _, err := r.resolve(p); err == nil {
			return p, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("not found in %s (is its Debian package in the image's list?)", strings.Join(dirs, ", "))
}

// resolve follows symlinks in every component of p, within the root:
// absolute targets are taken from the root, and ".." stops at it. It
// returns the path of the file p names and the symlinks it went through.
func (r Resolver) resolve(p string) (string, []string, error) {
	var links []string
	rest := strings.Split(cleanRel(p), "/")
	cur := ""
	for hops := 0; len(rest) > 0; {
		next := path.Join(cur, rest[0])
		rest = rest[1:]
		if next == "." || next == "" {
			cur = ""
			continue
		}
		fi, err := r.Root.Lstat(next)
		if err != nil {
			return "", nil, fmt.Errorf("resolve %s: %w", p, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > maxLinks {
			return "", nil, fmt.Errorf("resolve %s: too many levels of symbolic links", p)
		}
		target, err := r.Root.ReadLink(next)
		if err != nil {
			return "", nil, fmt.Errorf("resolve %s: %w", p, err)
		}
		links = append(links, next)
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		rest = append(strings.Split(cleanRel(target), "/"), rest...)
		cur = ""
	}
	if cur == "" {
		return "", nil, fmt.Errorf("resolve %s: names the root", p)
	}
	return cur, links, nil
}

// cleanRel cleans p as a path from the root: leading slashes and ".."
// components that would climb above the root are dropped.
func cleanRel(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}
