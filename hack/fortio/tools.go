//go:build tools

// Package tools pins fortio, the load generator of Istio's circuit-breaking task, which the
// circuit-breaking check (dataplane/tests/circuit_breaking.rs) runs against skein-proxy.
package tools

import _ "fortio.org/fortio"
