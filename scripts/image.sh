#!/usr/bin/env bash
# Builds the registry-proxy container image with buildah from this machine's
# Debian packages, pulling no base image (packaging/Containerfile.offline):
# the binary, the C libraries it links (as `ldd` lists them), Debian's CA
# bundle, a non-root user (65532) owning the volume /var/lib/registry-proxy.
# With registry access, `buildah bud -f packaging/Containerfile .` builds
# the same image from public base images instead.
#
#   scripts/image.sh [--binary PATH] [--tag NAME]
#
# --binary  an already-built registry-proxy (default: cargo build --release)
# --tag     the image's name (default localhost/registry-proxy:VERSION)
# BUILDAH_OPTS  global buildah options (the tests pass a private --root)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_apt buildah:buildah
[ -f /etc/ssl/certs/ca-certificates.crt ] || ensure_apt update-ca-certificates:ca-certificates

version=$(sed -n 's/^version = "\(.*\)"/\1/p' registry-proxy/Cargo.toml | head -1)
binary=""
tag="localhost/registry-proxy:$version"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--tag NAME]" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    require_rust
    cargo build --release --locked -p registry-proxy
    binary=target/release/registry-proxy
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
install -d "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/registry-proxy" "$root/home/nonroot"
install -d -m 1777 "$root/tmp"
strip -o "$root/usr/local/bin/registry-proxy" "$binary" 2>/dev/null \
    || install -m 0755 "$binary" "$root/usr/local/bin/registry-proxy"
# The dynamic loader and every library the binary links, at their paths.
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    cp -L --parents "$lib" "$root/"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
install -d "$context/data"

# shellcheck disable=SC2086
buildah ${BUILDAH_OPTS:-} bud --quiet -f packaging/Containerfile.offline -t "$tag" "$context" >/dev/null
echo "$tag"
