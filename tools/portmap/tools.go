//go:build tools

// Package tools names the upstream portmap CNI plugin, so that go mod tidy
// keeps what build.sh compiles.
package tools

import _ "github.com/containernetworking/plugins/plugins/meta/portmap"
