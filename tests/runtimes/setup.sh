#!/usr/bin/env bash
# Prepares the real CNI runtimes that tests/runtimes/ drives, on Debian 12. Idempotent and quiet.
#  - the simulated-LAN needs (tests/support/setup.sh)
#  - podman 4.3 + runc + conmon, containerd 1.6 (ctr), busybox-static, golang-go, dpkg-dev
#  - cnitool, built from Debian's golang-github-appc-cni source package with Debian's golang-go
#    (GOPATH mode with /usr/share/gocode, GOPROXY=off), cached in <repo>/.cache/runtimes/cnitool
#  - a tiny busybox-static rootfs tarball, <repo>/.cache/runtimes/busybox-rootfs.tar, that the
#    tests import into podman and containerd (nothing is ever pulled from a registry)
# Nothing here changes the host's network, /etc/cni, or the system apt sources: the source package
# comes through a private deb-src list kept under the cache directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${IOTLAN_RUNTIMES_CACHE:-$repo/.cache/runtimes}
mkdir -p "$cache"

bash "$here/../support/setup.sh"

export DEBIAN_FRONTEND=noninteractive
pkgs=(podman runc conmon containerd busybox-static golang-go dpkg-dev golang-github-appc-cni-dev xz-utils)
"$repo/scripts/apt-install" "${pkgs[@]}"

# --- cnitool from the source package -------------------------------------------------------------
if [[ ! -x $cache/cnitool ]]; then
    apt_dir=$cache/apt
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    # deb-src entries mirroring the system's own Debian entries (whatever mirror it uses).
    : >"$apt_dir/sources.list.d/src.sources"
    # Only the stanzas signed by Debian's archive keyring (third-party repositories carry no sources).
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v RS= -v ORS='\n\n' '/Signed-By:[^\n]*debian-archive-keyring/' "$f" |
            sed 's/^Types: deb$/Types: deb-src/' >>"$apt_dir/sources.list.d/src.sources"
    done
    : >"$apt_dir/src.list"
    [[ -f /etc/apt/sources.list ]] && sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >"$apt_dir/src.list"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/src.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
    apt-get "${apt_opts[@]}" update -qq >/dev/null
    src=$cache/src
    rm -rf "$src" && mkdir -p "$src"
    (cd "$src" && apt-get "${apt_opts[@]}" source -qq golang-github-appc-cni >/dev/null 2>&1)
    tree=$(find "$src" -maxdepth 1 -type d -name 'golang-github-appc-cni-*' | head -n1)
    [[ -n $tree && -f $tree/cnitool/cnitool.go ]] || { echo "setup: cnitool source not found in $src" >&2; exit 1; }
    gopath=$cache/gopath
    mkdir -p "$gopath/src/github.com/containernetworking"
    ln -sfn "$tree" "$gopath/src/github.com/containernetworking/cni"
    (cd "$gopath/src/github.com/containernetworking/cni/cnitool" &&
        GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" GOCACHE="$cache/gocache" \
            go build -o "$cache/cnitool.tmp" .)
    mv "$cache/cnitool.tmp" "$cache/cnitool"
fi

# --- the tiny image: a busybox-static rootfs, and the same image as an OCI archive for containerd -----------------------------------------------------
if [[ ! -s $cache/busybox-rootfs.tar ]]; then
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list-full); do
        [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$cache/busybox-rootfs.tar.tmp" .
    mv "$cache/busybox-rootfs.tar.tmp" "$cache/busybox-rootfs.tar"
    rm -rf "$root"
fi

if [[ ! -s $cache/busybox-oci.tar ]]; then
    # podman refuses a runroot path longer than 50 characters, and a clone can sit anywhere: the
    # throwaway store lives under /tmp.
    store=$(mktemp -d /tmp/iotlan-podman.XXXXXX)
    conf=$store/containers.conf
    printf '[engine]\ntmp_dir = "%s/tmp"\nevents_logger = "none"\n' "$store" >"$conf"
    podman_store=(--root "$store/root" --runroot "$store/runroot" --storage-driver vfs)
    CONTAINERS_CONF=$conf podman "${podman_store[@]}" import -q "$cache/busybox-rootfs.tar" \
        localhost/iotlan-busybox:latest >/dev/null
    CONTAINERS_CONF=$conf podman "${podman_store[@]}" save -q --format oci-archive \
        -o "$cache/busybox-oci.tar.tmp" localhost/iotlan-busybox:latest
    mv "$cache/busybox-oci.tar.tmp" "$cache/busybox-oci.tar"
    rm -rf "$store"
fi
