#!/usr/bin/env bash
# Builds Skein's OCI images from cargo-built binaries with umoci (no container daemon, no base
# image): skein-operator, skein-controlplane, skein-proxy (sidecar, gateways and the
# init-iptables step) and bookinfo-app (the e2e test app). Each becomes an OCI archive
# target/images/IMAGE.tar whose image is REGISTRY/IMAGE:TAG, ready for `ctr images import` or
# `skopeo copy oci-archive:...` to a registry.
#
#   hack/images.sh            build the binaries (release) and the images
#
# SKEIN_IMAGE_REGISTRY (default skein.local/skein), SKEIN_IMAGE_TAG (default dev),
# SKEIN_IMAGE_PROFILE (release or dev; dev reuses the test build and is what the e2e tests use).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
registry=${SKEIN_IMAGE_REGISTRY:-skein.local/skein}
tag=${SKEIN_IMAGE_TAG:-dev}
profile=${SKEIN_IMAGE_PROFILE:-release}
out="$root/target/images"
command -v umoci >/dev/null || { echo "images.sh: umoci is required (Debian: umoci)" >&2; exit 1; }

case $profile in
  release) bindir="$root/target/release" ;;
  dev) bindir="$root/target/debug" ;;
  *) echo "images.sh: SKEIN_IMAGE_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
(cd "$root" && cargo build -q --profile "$profile" \
  -p skein-operator -p skein-controlplane -p skein-proxy -p skein-e2e \
  --bin skein-operator --bin skein-controlplane --bin skein-proxy --bin bookinfo-app)

version=$(cd "$root" && cargo metadata -q --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="skein-operator"))')
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
source=${SKEIN_IMAGE_SOURCE:-$(git -C "$root" remote get-url origin 2>/dev/null || echo unknown)}
mkdir -p "$out"

# image NAME UID [BINARY [ENV...]]: pack target/<profile>/BINARY (default NAME) into
# $out/NAME.tar, with the image environment ENV (NAME=VALUE) besides PATH.
image() {
  local name=$1 uid=$2 bin=${3:-$1} work="$out/$1.work"
  shift $(( $# < 3 ? $# : 3 ))
  local extra=()
  for e in "$@"; do extra+=(--config.env "$e"); done
  rm -rf "$work"; mkdir -p "$work"
  "$here/rootfs.sh" "$bin" "$bindir/$bin" "$work/rootfs"
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:$tag"
  # One layer holding the whole root, owned by root (the binary is not writable by its user).
  umoci insert --image "$work/layout:$tag" "$work/rootfs" /
  umoci config --image "$work/layout:$tag" \
    --config.user "$uid:$uid" --config.workingdir / \
    --config.entrypoint "/usr/local/bin/$bin" \
    --config.env PATH=/usr/local/bin:/usr/sbin:/usr/bin "${extra[@]}" \
    --config.label "org.opencontainers.image.title=$name" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.source=$source" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.ref.name=$registry/$name:$tag"
  umoci gc --layout "$work/layout"
  tar -C "$work/layout" -cf "$out/$name.tar.partial" .
  mv "$out/$name.tar.partial" "$out/$name.tar"
  rm -rf "$work"
  echo "$out/$name.tar  $registry/$name:$tag"
}

image skein-operator 65532
image skein-controlplane 65532
image skein-proxy 1337
image bookinfo-app 65532
# Test releases only (dev images): a proxy that refuses any config over 1 KiB, as a release
# with a broken limit would; the upgrade e2e test's release whose proxies reject their configs.
if [ "$profile" = dev ]; then
  image skein-proxy-tight 1337 skein-proxy SKEIN_MAX_CONFIG_BYTES=1024
fi
echo "$registry $tag" >"$out/REF"
