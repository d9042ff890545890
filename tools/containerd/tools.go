//go:build tools

// Package tools pins the upstream containerd commands this module builds:
// containerd itself and its runc shim, unmodified, at the version in go.mod.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
)
