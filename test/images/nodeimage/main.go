// Command nodeimage writes the image of Capstan's node daemon (the Helm
// chart's DaemonSet) as an OCI image-layout archive, from the binaries of
// make build and Debian's packages:
//
//	go run ./test/images/nodeimage -ref capstan.local/capstan:0.1.0 -bin bin -o bin/images/capstan.tar
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/capstan-net/capstan/test/images/e2eimages"
)

func main() {
	var opts e2eimages.NodeOptions
	out := flag.String("o", "bin/images/capstan.tar", "archive to write")
	flag.StringVar(&opts.Ref, "ref", "", "the image's name, e.g. capstan.local/capstan:0.1.0")
	flag.StringVar(&opts.Bin, "bin", "bin", "directory of capstan, capstan-cni and portmap (make build)")
	flag.StringVar(&opts.Debs, "debs", "bin/debs", "cache of downloaded Debian packages")
	flag.Parse()
	if flag.NArg() != 0 || opts.Ref == "" {
		fmt.Fprintln(os.Stderr, "nodeimage: -ref is required and no arguments are taken")
		os.Exit(2)
	}
	opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := e2eimages.WriteNode(context.Background(), opts, *out); err != nil {
		fmt.Fprintf(os.Stderr, "nodeimage: %v\n", err)
		os.Exit(1)
	}
	opts.Log.Info("wrote archive", "path", *out, "image", opts.Ref)
}
