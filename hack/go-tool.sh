#!/usr/bin/env bash
# Builds a Go program that test infrastructure uses from a pinned module directory under hack/
# into a cache, and prints the binary's path. Idempotent: a second run with the same pins (the
# directory's go.mod/go.sum and sources, and the calling script) does nothing.
#   hack/go-tool.sh NAME DIR PACKAGE [BUILD-TAGS]
# e.g. hack/go-tool.sh helm hack/helm helm.sh/helm/v3/cmd/helm. The wrappers (fortio.sh,
# kstatus.sh, helm.sh, opm.sh) name what they build. SKEIN_TOOLS_CACHE overrides the cache root
# (default ~/.cache/skein).
set -euo pipefail
name=$1 dir=$2 pkg=$3 tags=${4:-}
key=$( (cat "$0" "$dir"/go.mod "$dir"/go.sum; find "$dir" -name '*.go' | sort | xargs -r cat; echo "$pkg $tags") | sha256sum | cut -c1-16)
bin="${SKEIN_TOOLS_CACHE:-$HOME/.cache/skein}/$name-$key/$name"
if [ ! -x "$bin" ]; then
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=/usr/local/go/bin:$PATH; fi
  command -v go >/dev/null || { echo "$name: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
  echo "$name: building $pkg into $bin" >&2
  mkdir -p "$(dirname "$bin")"
  (cd "$dir" && GOFLAGS=-mod=readonly go build ${tags:+-tags "$tags"} -o "$bin.partial" "$pkg")
  mv "$bin.partial" "$bin"
fi
echo "$bin"
