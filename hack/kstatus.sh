#!/usr/bin/env bash
# Builds hack/kstatus (the status GitOps tools compute for an object, with the real libraries:
# sigs.k8s.io/cli-utils kstatus and Flux's fork, pinned in hack/kstatus/go.mod) into a cache and
# prints the binary's path. Idempotent: a second run with the same pins does nothing.
# SKEIN_TOOLS_CACHE overrides the cache root (default ~/.cache/skein).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$0" "$here"/kstatus/go.mod "$here"/kstatus/go.sum "$here"/kstatus/main.go | sha256sum | cut -c1-16)
bin="${SKEIN_TOOLS_CACHE:-$HOME/.cache/skein}/kstatus-$key/kstatus"
if [ ! -x "$bin" ]; then
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=/usr/local/go/bin:$PATH; fi
  command -v go >/dev/null || { echo "kstatus.sh: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
  echo "kstatus.sh: building kstatus into $bin" >&2
  mkdir -p "$(dirname "$bin")"
  (cd "$here/kstatus" && GOFLAGS=-mod=readonly go build -o "$bin.partial" .)
  mv "$bin.partial" "$bin"
fi
echo "$bin"
