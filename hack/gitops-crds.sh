#!/usr/bin/env bash
# Prints the paths of the CRDs a GitOps install of Skein is written against, taken from the
# pinned releases' own Go modules (the module proxy serves the whole repository, manifests
# included): Argo CD's Application, Flux's GitRepository and Kustomization. The e2e tests apply
# them to a cluster so README's Argo CD and Flux blocks are validated by the apiserver against
# the real schemas (no Argo CD or Flux controller runs here: neither builds offline).
set -euo pipefail
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=/usr/local/go/bin:$PATH; fi
command -v go >/dev/null || { echo "gitops-crds: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
# module@version  path of the CRD inside it
pins=(
  "github.com/argoproj/argo-cd/v3@v3.2.0 manifests/crds/application-crd.yaml"
  "github.com/fluxcd/source-controller@v1.9.0 config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml"
  "github.com/fluxcd/kustomize-controller@v1.9.0 config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml"
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
for pin in "${pins[@]}"; do
  read -r module file <<<"$pin"
  dir=$(GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "$module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -f "$dir/$file" ] || { echo "gitops-crds: $module has no $file" >&2; exit 1; }
  echo "$dir/$file"
done
