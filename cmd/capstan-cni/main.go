// Command capstan-cni is the Capstan CNI plugin; the logic lives in package cni.
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/capstan-net/capstan/cni"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := cni.New(log.With("plugin", cni.PluginType))
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    p.Add,
		Del:    p.Del,
		Check:  p.Check,
		GC:     p.GC,
		Status: p.Status,
	}, version.All, "capstan-cni: veth and routes for Capstan pods, CNI spec up to 1.1.0")
}
