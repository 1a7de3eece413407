#!/usr/bin/env bash
# Builds fortio (Istio's load generator, pinned in hack/fortio/go.mod) into a cache and prints
# the binary's path. Idempotent: a second run with the same pin does nothing.
# SKEIN_TOOLS_CACHE overrides the cache root (default ~/.cache/skein).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$0" "$here"/fortio/go.mod "$here"/fortio/go.sum | sha256sum | cut -c1-16)
bin="${SKEIN_TOOLS_CACHE:-$HOME/.cache/skein}/fortio-$key/fortio"
if [ ! -x "$bin" ]; then
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=/usr/local/go/bin:$PATH; fi
  command -v go >/dev/null || { echo "fortio.sh: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
  echo "fortio.sh: building fortio into $bin" >&2
  mkdir -p "$(dirname "$bin")"
  (cd "$here/fortio" && GOFLAGS=-mod=readonly go build -o "$bin.partial" fortio.org/fortio)
  mv "$bin.partial" "$bin"
fi
echo "$bin"
