#!/usr/bin/env bash
# Lays out one image's root filesystem from a built binary: the binary, the shared libraries it
# links (and the dynamic loader), CA certificates, /etc/passwd and /etc/group entries for its
# user, an empty /tmp mount point, and nothing else (no shell, no package manager). The proxy's
# image also carries iptables-restore and its extensions for the `init-iptables` init container.
#
#   hack/rootfs.sh IMAGE BINARY DIR
#
# IMAGE is skein-operator, skein-controlplane, skein-proxy or bookinfo-app. hack/images.sh packs
# DIR into an OCI image; the Dockerfile runs this same script, so both give the same layout.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 IMAGE BINARY DIR" >&2; exit 2; }
image=$1 binary=$2 dir=$3
[ -x "$binary" ] || { echo "rootfs.sh: $binary is not an executable (build it first)" >&2; exit 1; }
for t in ldd strip; do
  command -v "$t" >/dev/null || { echo "rootfs.sh: $t is required (Debian: libc-bin, binutils)" >&2; exit 1; }
done
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "rootfs.sh: $ca is missing (Debian: ca-certificates)" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs" "$dir/tmp"
chmod 1777 "$dir/tmp"
# Debug sections only make the image bigger; symbols stay for backtraces.
strip --strip-debug -o "$dir/usr/local/bin/$image" "$binary"

# copy_libs FILE...: every shared library the files load, at its own path, symlinks resolved.
copy_libs() {
  ldd "$@" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}' | sort -u | while read -r lib; do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
}
copy_libs "$dir/usr/local/bin/$image"
cp "$ca" "$dir/etc/ssl/certs/ca-certificates.crt"

# Users: the proxy runs as Istio's 1337 (the capture rules exempt that uid); everything else as
# the conventional non-root 65532. root exists only for the proxy's init step.
cat >"$dir/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
istio-proxy:x:1337:1337:istio-proxy:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
EOF
cat >"$dir/etc/group" <<'EOF'
root:x:0:
istio-proxy:x:1337:
nonroot:x:65532:
EOF
echo "hosts: files dns" >"$dir/etc/nsswitch.conf"

if [ "$image" = skein-proxy ]; then
  # iptables-restore (whichever backend this Debian uses: nft by default) and the extensions
  # it loads at run time (ldd cannot see those).
  restore=$(command -v iptables-restore) ||
    { echo "rootfs.sh: iptables-restore is required for the proxy image (Debian: iptables)" >&2; exit 1; }
  multi=$(readlink -f "$restore")
  mkdir -p "$dir/usr/sbin"
  cp "$multi" "$dir/usr/sbin/"
  ln -s "$(basename "$multi")" "$dir/usr/sbin/iptables-restore"
  ln -s "$(basename "$multi")" "$dir/usr/sbin/ip6tables-restore"
  copy_libs "$multi"
  ext=/usr/lib/x86_64-linux-gnu/xtables
  [ -d "$ext" ] && { mkdir -p "$dir$ext"; cp "$ext"/*.so "$dir$ext/"; copy_libs "$ext"/*.so; }
fi

# The root must be self-contained: the binary starts with only what was copied here.
case $image in
  bookinfo-app) { chroot "$dir" /usr/local/bin/bookinfo-app 2>&1 || true; } | grep -q usage ||
    { echo "rootfs.sh: $image does not start inside its root" >&2; exit 1; } ;;
  *) chroot "$dir" "/usr/local/bin/$image" --version >/dev/null ||
    { echo "rootfs.sh: $image does not start inside its root" >&2; exit 1; } ;;
esac
