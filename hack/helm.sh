#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v3, pinned in hack/helm/go.mod as a Go tool) into a cache and prints
# the binary's path (hack/go-tool.sh): make test lints and renders the operator's chart with it,
# and an e2e test installs it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/go-tool.sh" helm "$here/helm" helm.sh/helm/v3/cmd/helm
