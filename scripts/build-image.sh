#!/usr/bin/env bash
# Builds the container image bindwatch:<version> (the name deploy/kubernetes/daemonset.yaml
# uses) from Containerfile: a static binary on scratch.
#
#   bash scripts/build-image.sh                  # static release build, image, OCI archive
#   bash scripts/build-image.sh --binary PATH    # use an already built static binary
#   bash scripts/build-image.sh --no-image       # only the static binary and the context
#
# Steps:
#   1. RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target
#      <arch>-unknown-linux-gnu: glibc linked in statically (no musl target is needed);
#      refused if the result still needs a shared library;
#   2. target/image/context/: the stripped binary and the copyright file, all the image holds;
#   3. podman build -f Containerfile (buildah bud when podman is missing), tagged
#      bindwatch:<version>, and saved to target/image/bindwatch_<version>_<arch>.oci.tar for
#      nodes without a registry (`ctr -n k8s.io images import FILE`).
# Installs podman (Debian) when it is missing and the script runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-copyright.sh

binary=""
image=1
while [ $# -gt 0 ]; do
    case "$1" in
    --binary)
        binary="${2:?--binary needs a PATH}"
        shift 2
        ;;
    --no-image)
        image=0
        shift
        ;;
    *)
        echo "build-image: unknown argument $1 (usage: build-image.sh [--binary PATH] [--no-image])" >&2
        exit 2
        ;;
    esac
done

version=$(awk -F'"' '/^\[package\]/{p=1; next} /^\[/{p=0} p && /^version *=/{print $2; exit}' Cargo.toml)
[ -n "$version" ] || {
    echo "build-image: no version in Cargo.toml [package]" >&2
    exit 1
}
triple="$(uname -m)-unknown-linux-gnu"
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
tag="bindwatch:$version"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"

if [ -z "$binary" ]; then
    # With --target, RUSTFLAGS reach only the target's code, not build scripts or proc-macros.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked --target "$triple"
    binary="target/$triple/release/bindwatch"
fi
[ -x "$binary" ] || {
    echo "build-image: $binary is not an executable" >&2
    exit 1
}
if readelf -d "$binary" 2>/dev/null | grep -q '(NEEDED)'; then
    echo "build-image: $binary needs shared libraries, it cannot run on scratch:" >&2
    readelf -d "$binary" | grep '(NEEDED)' >&2
    exit 1
fi

ctx=target/image/context
rm -rf "$ctx"
mkdir -p "$ctx"
install -m 0755 "$binary" "$ctx/bindwatch"
strip --strip-unneeded --remove-section=.comment "$ctx/bindwatch"
write_copyright "$ctx/copyright"
chmod 0644 "$ctx/copyright"
echo "build-image: context $ctx"
[ "$image" = 1 ] || exit 0

if ! command -v podman >/dev/null 2>&1 && ! command -v buildah >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "build-image: neither podman nor buildah is installed (apt-get install podman)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman
fi
# Building runs no container (scratch has nothing to run), so it works where running one
# would not.
archive="target/image/bindwatch_${version}_${arch}.oci.tar"
rm -f "$archive"
if command -v podman >/dev/null 2>&1; then
    podman build --quiet --build-arg "VERSION=$version" --timestamp "$SOURCE_DATE_EPOCH" \
        -f Containerfile -t "$tag" "$ctx" >/dev/null
    podman save --quiet --format oci-archive -o "$archive" "$tag"
else
    buildah bud --quiet --build-arg "VERSION=$version" --timestamp "$SOURCE_DATE_EPOCH" \
        -f Containerfile -t "$tag" "$ctx" >/dev/null
    buildah push --quiet "$tag" "oci-archive:$archive:$tag"
fi
echo "build-image: image $tag"
echo "build-image: archive $archive"
