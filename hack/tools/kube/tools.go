//go:build tools

// Package tools pins the Kubernetes components Skein's tests run against.
// The binaries are built with `go build k8s.io/kubernetes/cmd/...` from this module, whose
// replace block maps the kubernetes staging modules to their published versions.
package tools
