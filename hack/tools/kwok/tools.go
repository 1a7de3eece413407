//go:build tools

// Package tools pins kwok, which fakes a node so Pods of Deployments report Running/Ready.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
