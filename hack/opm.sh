#!/usr/bin/env bash
# Builds opm (github.com/operator-framework/operator-registry, pinned in hack/opm/go.mod as a Go
# tool) into a cache and prints the binary's path (hack/go-tool.sh): make test validates the OLM
# catalog and renders the bundle with it. Built with containers_image_openpgp (no gpgme C
# library); cel-go is held at the version operator-registry's own go.mod replaces it with (newer
# ones break its k8s.io/apiserver).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/go-tool.sh" opm "$here/opm" github.com/operator-framework/operator-registry/cmd/opm containers_image_openpgp
