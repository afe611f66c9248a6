#!/usr/bin/env bash
# Builds the iotlan image (Containerfile, FROM scratch) for amd64 and arm64 with podman or buildah, whichever
# is present, as <name>:<version>-<arch> plus a manifest list <name>:<version> (<version>: Cargo.toml's).
#
#   scripts/build-image.sh             build the static binaries (scripts/build-static.sh), then the images
#   scripts/build-image.sh --no-build  use the binaries already in dist/
#   scripts/build-image.sh --name REPO the image's name without tag (default localhost/iotlan); the release
#                                      workflow (.github/workflows/release.yml) passes the registry's name
#   scripts/build-image.sh --save DIR  also write one image archive per arch, DIR/iotlan-<version>-<arch>.tar
#                                      (docker-archive, tagged <name>:<version>): what a node without a registry
#                                      imports (k3s: /var/lib/rancher/k3s/agent/images/; ctr -n k8s.io images import)
#
# FROM scratch needs no registry, so this works offline. Without podman or buildah it says so and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
build=1 save="" name=localhost/iotlan
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --save) save=${2:?--save needs a directory}; shift ;;
        --name) name=${2:?--name needs an image name}; shift ;;
        *) echo "usage: $0 [--no-build] [--name REPO] [--save DIR]" >&2; exit 2 ;;
    esac
    shift
done

if command -v podman >/dev/null; then tool=podman
elif command -v buildah >/dev/null; then tool=buildah
else
    echo "build-image: neither podman nor buildah is installed (Debian: apt-get install podman); no image built" >&2
    exit 1
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
image=$name:$version

((build)) && bash scripts/build-static.sh
for arch in amd64 arm64; do
    [ -x "dist/linux-$arch/iotlan" ] || { echo "build-image: dist/linux-$arch/iotlan missing (run scripts/build-static.sh)" >&2; exit 1; }
done

"$tool" manifest rm "$image" >/dev/null 2>&1 || true
"$tool" manifest create "$image" >/dev/null
for arch in amd64 arm64; do
    if [ "$tool" = podman ]; then
        podman build -q --platform "linux/$arch" -f Containerfile -t "$image-$arch" . >/dev/null
    else
        buildah bud -q --platform "linux/$arch" -f Containerfile -t "$image-$arch" . >/dev/null
    fi
    "$tool" manifest add "$image" "containers-storage:$image-$arch" >/dev/null
    echo "build-image: $image-$arch"
    if [ -n "$save" ]; then
        mkdir -p "$save"
        archive=$save/iotlan-$version-$arch.tar
        # Named without the arch suffix, as the DaemonSet refers to it; written under a temporary name and
        # renamed, so that a node's import directory never holds half an archive.
        rm -f "$archive" "$archive.tmp"
        "$tool" push -q "$image-$arch" "docker-archive:$archive.tmp:$image" >/dev/null
        mv -f "$archive.tmp" "$archive"
        echo "build-image: $save/iotlan-$version-$arch.tar"
    fi
done
echo "build-image: $image (manifest list: amd64, arm64)"
