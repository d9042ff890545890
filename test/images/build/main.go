// Command build writes Capstan's test images (see package imagebuild) into one
// OCI image-layout archive:
//
//	go run ./test/images/build -o bin/images/capstan-test-images.tar
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/capstan-net/capstan/test/images/imagebuild"
)

func main() {
	out := flag.String("o", "bin/images/capstan-test-images.tar", "archive to write")
	busybox := flag.String("busybox", imagebuild.DefaultBusybox, "statically linked busybox (Debian: busybox-static)")
	echo := flag.String("echo", "", "prebuilt static capstan-echo (default: go build "+imagebuild.EchoPackage+")")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "build: no arguments expected")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts := imagebuild.Options{Busybox: *busybox, Echo: *echo, Log: log}
	if err := imagebuild.WriteFile(context.Background(), opts, *out); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n", err)
		os.Exit(1)
	}
	log.Info("wrote archive", "path", *out, "images", []string{imagebuild.EchoImage, imagebuild.BusyboxImage})
}
