// Command e2ebuild writes the images the upstream e2e suite needs (see
// package e2eimages) into one OCI image-layout archive, for
// `capstan up --images`:
//
//	go run ./test/images/e2ebuild -o bin/images/e2e-images.tar
//
// It runs as root on Debian (apt-get download, dpkg-deb) and reads the
// binaries `make build` and `make e2e-tools` leave in bin/.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/capstan-net/capstan/test/images/e2eimages"
)

func main() {
	out := flag.String("o", "bin/images/e2e-images.tar", "archive to write")
	opts := e2eimages.Options{}
	flag.StringVar(&opts.Debs, "debs", "bin/debs", "directory the downloaded .debs are kept in")
	flag.StringVar(&opts.Agnhost, "agnhost", "bin/agnhost", "static agnhost (make e2e-tools)")
	flag.StringVar(&opts.CoreDNS, "coredns", "bin/coredns", "static coredns (make build)")
	flag.StringVar(&opts.Pause, "pause", "bin/capstan-pause", "static pause program (make build)")
	flag.StringVar(&opts.Regression, "regression", "bin/regression-issue-74839", "static regression-issue-74839 (make e2e-tools); empty leaves its image out")
	flag.StringVar(&opts.SampleAPIServer, "sample-apiserver", "bin/sample-apiserver", "static sample-apiserver (make e2e-tools); empty leaves its image out")
	flag.StringVar(&opts.Nonewprivs, "nnp", "bin/nnp", "static nnp of the nonewprivs image (make e2e-tools); empty leaves its image out")
	flag.StringVar(&opts.Etcd, "etcd", "bin/etcd", "static etcd (make e2e-tools); empty leaves its image out")
	flag.StringVar(&opts.KubeSrc, "kube-src", "", "k8s.io/kubernetes module directory (default: from go mod download)")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "e2ebuild: no arguments expected")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts.Log = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, *out); err != nil {
		fmt.Fprintf(os.Stderr, "e2ebuild: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, opts e2eimages.Options, out string) error {
	if opts.KubeSrc == "" {
		dir, err := moduleDir(ctx, "k8s.io/kubernetes")
		if err != nil {
			return err
		}
		opts.KubeSrc = dir
	}
	refs, err := e2eimages.WriteFile(ctx, opts, out)
	if err != nil {
		return err
	}
	fi, err := os.Stat(out)
	if err != nil {
		return err
	}
	opts.Log.Info("wrote archive", "path", out, "bytes", fi.Size(), "images", refs)
	return nil
}

// moduleDir returns the directory of module mod at the version the main
// module requires, downloading it if the module cache lacks it.
func moduleDir(ctx context.Context, mod string) (string, error) {
	b, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod).Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w", mod, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("go mod download %s: %w", mod, err)
	}
	if m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no directory: %s", mod, m.Error)
	}
	return m.Dir, nil
}
