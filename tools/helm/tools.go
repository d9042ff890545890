//go:build tools

// Package tools pins the upstream Helm CLI this module builds, unmodified, at
// the version in go.mod, so that `go mod tidy` keeps every module it needs.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
