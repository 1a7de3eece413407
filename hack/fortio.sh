#!/usr/bin/env bash
# Builds fortio (Istio's load generator, pinned in hack/fortio/go.mod) into a cache and prints
# the binary's path (hack/go-tool.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/go-tool.sh" fortio "$here/fortio" fortio.org/fortio
