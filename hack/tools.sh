#!/usr/bin/env bash
# Builds the pinned Kubernetes test components from Go modules into a cache and prints the
# directory holding them. Idempotent: a second run with the same pins does nothing.
#
#   hack/tools.sh            build if needed, print the bin directory
#
# Pins live in hack/tools/*/go.mod (Kubernetes v1.34.4 incl. kubelet and kube-proxy, etcd v3.6.16,
# kwok v0.7.0, CoreDNS v1.12.4 with the plugins a test cluster needs, and a static pause program
# for the pod sandbox image).
# SKEIN_TOOLS_CACHE overrides the cache root (default ~/.cache/skein).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tools="$here/tools"

# The cache key is a digest of the pins, so changing a go.mod rebuilds into a fresh directory.
key=$(cat "$0" "$tools"/*/go.mod "$tools"/*/go.sum "$tools"/*/main.go | sha256sum | cut -c1-16)
bin="${SKEIN_TOOLS_CACHE:-$HOME/.cache/skein}/k8s-$key/bin"
want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kubelet kube-proxy coredns pause)

missing=()
for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "tools.sh: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
mkdir -p "$bin.partial"
echo "tools.sh: building ${missing[*]} into $bin (first run takes several minutes)" >&2
export GOFLAGS=-mod=readonly
(cd "$tools/etcd" && go build -o "$bin.partial/etcd" .)
(cd "$tools/kwok" && go build -o "$bin.partial/" sigs.k8s.io/kwok/cmd/kwok)
(cd "$tools/coredns" && go build -o "$bin.partial/coredns" .)
(cd "$tools/pause" && CGO_ENABLED=0 go build -ldflags=-s -o "$bin.partial/pause" .)
# The version the components report (kubectl version, the node's kubeletVersion), which a build
# from the module would otherwise leave as v0.0.0-master.
kube_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$tools/kube/go.mod")
IFS=. read -r kube_major kube_minor _ <<<"${kube_version#v}"
(cd "$tools/kube" && go build -ldflags "-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=$kube_major -X k8s.io/component-base/version.gitMinor=$kube_minor" -o "$bin.partial/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy)
rm -rf "$bin" && mv "$bin.partial" "$bin"
echo "$bin"
