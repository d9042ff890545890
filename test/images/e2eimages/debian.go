package e2eimages

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Debian downloads Debian packages with apt-get and unpacks them with
// dpkg-deb, on a Debian machine whose apt sources reach the archive. The
// .debs are kept in Cache, named as `apt-get download` names them, so a
// package is downloaded once per version.
type Debian struct {
	// Cache is the directory the .debs are downloaded into.
	Cache string
	// Suite, when set, takes the packages from that suite of the Debian
	// archive (deb.debian.org) instead of the machine's apt sources, through
	// package lists of its own under Cache; the machine's apt is untouched.
	Suite string
	Log   *slog.Logger
	// opts are aptOptions, set by Unpack.
	opts []string
}

// archiveURL is the Debian archive a Suite is taken from.
const archiveURL = "http://deb.debian.org/debian"

// aptOptions point apt at the Suite's own sources list, package lists and
// cache, none when no Suite is set.
func (d Debian) aptOptions() ([]string, error) {
	if d.Suite == "" {
		return nil, nil
	}
	dir, err := filepath.Abs(filepath.Join(d.Cache, "apt-"+d.Suite))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "lists", "partial"), 0o755); err != nil {
		return nil, fmt.Errorf("apt dir for %s: %w", d.Suite, err)
	}
	list := filepath.Join(dir, "sources.list")
	line := "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] " + archiveURL + " " + d.Suite + " main\n"
	if err := os.WriteFile(list, []byte(line), 0o644); err != nil {
		return nil, fmt.Errorf("apt sources for %s: %w", d.Suite, err)
	}
	// An empty dpkg status, so that what the machine has installed (its own
	// release's version of a package) does not count as known.
	status := filepath.Join(dir, "status")
	if err := os.WriteFile(status, nil, 0o644); err != nil {
		return nil, fmt.Errorf("apt status for %s: %w", d.Suite, err)
	}
	return []string{
		"-o", "Dir::Etc::SourceList=" + list, "-o", "Dir::State::status=" + status, "-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"), "-o", "Dir::Cache=" + dir,
		// The lists are root's own files, which apt's _apt user may not write.
		"-o", "APT::Sandbox::User=root",
	}, nil
}

// debPackage is one binary package at its candidate version.
type debPackage struct {
	Name, Version, Arch string
}

// file is the name `apt-get download` gives the package's .deb: the
// epoch's colon is escaped as %3a.
func (p debPackage) file() string {
	return p.Name + "_" + strings.ReplaceAll(p.Version, ":", "%3a") + "_" + p.Arch + ".deb"
}

// Unpack downloads roots and every package they depend on (Depends and
// Pre-Depends, recursively, at the candidate versions) into the cache and
// extracts them all into dir, in name order. The image builder picks files
// from dir; most of what is extracted is never used.
func (d Debian) Unpack(ctx context.Context, roots []string, dir string) ([]debPackage, error) {
	opts, err := d.aptOptions()
	if err != nil {
		return nil, err
	}
	d.opts = opts
	if err := d.ensureLists(ctx, roots); err != nil {
		return nil, err
	}
	out, err := d.run(ctx, "", "apt-cache", append([]string{"depends", "--recurse", "--no-recommends",
		"--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"}, roots...)...)
	if err != nil {
		return nil, err
	}
	names := parseDepends(out)
	out, err = d.run(ctx, "", "apt-cache", append([]string{"show", "--no-all-versions"}, names...)...)
	if err != nil {
		return nil, err
	}
	pkgs, err := parseShow(out)
	if err != nil {
		return nil, err
	}
	if err := d.download(ctx, pkgs); err != nil {
		return nil, err
	}
	for _, p := range pkgs {
		if _, err := d.run(ctx, "", "dpkg-deb", "-x", filepath.Join(d.Cache, p.file()), dir); err != nil {
			return nil, err
		}
	}
	d.Log.Info("unpacked Debian packages", "count", len(pkgs), "dir", dir)
	return pkgs, nil
}

// ensureLists runs `apt-get update` when apt knows none of roots, as on a
// fresh machine whose package lists were never fetched.
func (d Debian) ensureLists(ctx context.Context, roots []string) error {
	if _, err := d.run(ctx, "", "apt-cache", append([]string{"show", "--no-all-versions"}, roots...)...); err == nil {
		return nil
	}
	d.Log.Info("apt does not know the packages; running apt-get update", "suite", d.Suite)
	if _, err := d.run(ctx, "", "apt-get", "update", "-qq"); err != nil {
		return err
	}
	_, err := d.run(ctx, "", "apt-cache", append([]string{"show", "--no-all-versions"}, roots...)...)
	return err
}

// download fetches the packages whose .deb is not in the cache yet.
func (d Debian) download(ctx context.Context, pkgs []debPackage) error {
	if err := os.MkdirAll(d.Cache, 0o755); err != nil {
		return fmt.Errorf("create deb cache: %w", err)
	}
	var missing []string
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(d.Cache, p.file())); errors.Is(err, os.ErrNotExist) {
			missing = append(missing, p.Name+"="+p.Version)
		} else if err != nil {
			return fmt.Errorf("deb cache: %w", err)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	d.Log.Info("downloading Debian packages", "count", len(missing), "cache", d.Cache)
	if _, err := d.run(ctx, d.Cache, "apt-get", append([]string{"download", "-qq"}, missing...)...); err != nil {
		return err
	}
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(d.Cache, p.file())); err != nil {
			return fmt.Errorf("apt-get download left no %s: %w", p.file(), err)
		}
	}
	return nil
}

// run runs a command in dir and returns its standard output; its error
// carries the command line and standard error.
func (d Debian) run(ctx context.Context, dir, name string, args ...string) (string, error) {
	line := name + " " + strings.Join(args, " ")
	if len(line) > 200 {
		line = line[:200] + "..."
	}
	if strings.HasPrefix(name, "apt-") {
		args = append(slices.Clone(d.opts), args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", line, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// parseDepends returns the package names `apt-cache depends --recurse`
// lists (its unindented lines), sorted: virtual packages (<name>) and
// packages of foreign architectures (name:arch) are left out, since
// another package in the list provides each virtual one.
func parseDepends(out string) []string {
	var names []string
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		if line == "" || line[0] == ' ' || strings.HasPrefix(line, "<") || strings.Contains(line, ":") {
			continue
		}
		names = append(names, line)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// parseShow reads the Package, Version and Architecture fields of each
// stanza of `apt-cache show` output.
func parseShow(out string) ([]debPackage, error) {
	var pkgs []debPackage
	var cur debPackage
	flush := func() error {
		if cur == (debPackage{}) {
			return nil
		}
		if cur.Name == "" || cur.Version == "" || cur.Arch == "" {
			return fmt.Errorf("apt-cache show: incomplete stanza %+v", cur)
		}
		pkgs = append(pkgs, cur)
		cur = debPackage{}
		return nil
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		key, val, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		switch key {
		case "Package":
			cur.Name = val
		case "Version":
			cur.Version = val
		case "Architecture":
			cur.Arch = val
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("apt-cache show: %w", err)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	slices.SortFunc(pkgs, func(a, b debPackage) int { return strings.Compare(a.Name, b.Name) })
	return slices.CompactFunc(pkgs, func(a, b debPackage) bool { return a.Name == b.Name }), nil
}
