//go:build tools

// Package tools pins the upstream CoreDNS this module builds, unmodified, at
// the version in go.mod: the cluster DNS add-on's server.
package tools

import _ "github.com/coredns/coredns"
