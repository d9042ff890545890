package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/capstan-net/capstan/control/bootstrap"
	"github.com/capstan-net/capstan/internal/atomicfile"
)

// layoutVersion numbers the data dir's layout. 1 was Capstan's own API
// server (its own storage format in etcd); 2 is the upstream control plane.
const layoutVersion = 2

const layoutFile = "capstan-layout"

// ErrOldLayout means the data dir was written by an older Capstan.
var ErrOldLayout = errors.New("data dir written by an older Capstan")

// checkLayout refuses a data dir that another layout wrote, before anything
// in it is touched; a new or empty dir is fine, and so is one holding only
// another server's pki/ and join-token (how a second server of a cluster is
// set up). Without the layout file, etcd data, the first layout's serving
// certificate (pki/server.crt) or its hex join token mark Capstan's first
// layout.
func checkLayout(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, layoutFile))
	if err == nil {
		v, perr := strconv.Atoi(strings.TrimSpace(string(data)))
		switch {
		case perr != nil:
			return fmt.Errorf("data dir %s: %s holds %q, not a layout version", dir, layoutFile, strings.TrimSpace(string(data)))
		case v < layoutVersion:
			return fmt.Errorf("%w: %s has layout %d, this Capstan needs %d; nothing was changed: move it aside or give another --data-dir", ErrOldLayout, dir, v, layoutVersion)
		case v > layoutVersion:
			return fmt.Errorf("data dir %s has layout %d, written by a newer Capstan (this one knows %d); nothing was changed", dir, v, layoutVersion)
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	old := func(what string) error {
		return fmt.Errorf("%w: %s holds %s but no %s (Capstan's own API server wrote it; the upstream control plane cannot read its store); nothing was changed: move it aside or give another --data-dir", ErrOldLayout, dir, what, layoutFile)
	}
	for _, p := range []string{"etcd", "pki/server.crt"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			return old(p)
		}
	}
	if data, err := os.ReadFile(filepath.Join(dir, "join-token")); err == nil {
		if _, _, err := bootstrap.ParseToken(string(data)); err != nil {
			return old("a join-token of the first layout")
		}
	}
	return nil
}

func writeLayout(dir string) error {
	return atomicfile.Write(filepath.Join(dir, layoutFile), []byte(strconv.Itoa(layoutVersion)+"\n"), 0o644)
}
