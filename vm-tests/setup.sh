#!/usr/bin/env bash
# Installs what vm-tests/run needs (Debian 12) and caches Debian's cloud kernel. Idempotent and quiet.
#   qemu-system-x86 + vde2: the VMs and their shared L2 segment (TCG, no host privileges needed). qemu-system-x86
#     comes from the release the machine's qemu-utils comes from: an image with bookworm-backports' qemu-utils
#     (>= 1:8.0+dfsg-5~, which Breaks bookworm's qemu-system-common) gets it from bookworm-backports, whose
#     source is added if missing (scripts/apt-backports); a machine without qemu-utils, or with bookworm's,
#     gets bookworm's.
#   busybox-static, iproute2, nftables, socat: copied into the guests' initramfs
#   containernetworking-plugins: Debian's reference plugins (vm-tests/run --reference)
# The kernel lands in ${VMT_CACHE_DIR:-<repo>/.cache/vm}/kernel -> kernel-<version>/{vmlinuz,lib/modules/<version>}.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${VMT_CACHE_DIR:-$(dirname "$here")/.cache/vm}
packages=(vde2 busybox-static iproute2 nftables socat cpio python3 containernetworking-plugins)

"$here/../scripts/apt-install" "${packages[@]}"
qemu_release=()
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q 'install ok installed' &&
    utils=$(dpkg-query -W -f='${Status} ${Version}' qemu-utils 2>/dev/null) &&
    [[ $utils == "install ok installed "* ]] && dpkg --compare-versions "${utils##* }" ge '1:8.0+dfsg-5~'; then
    qemu_release=(--target-release "$("$here/../scripts/apt-backports")")
fi
"$here/../scripts/apt-install" "${qemu_release[@]}" qemu-system-x86

if [[ -e $cache/kernel/vmlinuz ]]; then
    exit 0
fi
# The package the cloud-kernel metapackage points at, e.g. linux-image-6.1.0-56-cloud-amd64.
download_kernel() {
    local pkg
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
    [[ -n $pkg ]] && (cd "$tmp" && apt-get -o APT::Sandbox::User=root -qq download "$pkg" >/dev/null)
}
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! download_kernel; then
    apt-get -o DPkg::Lock::Timeout=600 -qq update >/dev/null
    download_kernel || { echo "setup.sh: cannot download Debian's cloud kernel (linux-image-cloud-amd64)" >&2; exit 1; }
fi
dpkg-deb -x "$tmp"/*.deb "$tmp/root"
version=$(ls "$tmp/root/lib/modules")
busybox depmod -b "$tmp/root" "$version"
dest=$cache/kernel-$version
rm -rf "$dest"
mkdir -p "$dest/lib/modules"
mv "$tmp/root/boot/vmlinuz-$version" "$dest/vmlinuz"
mv "$tmp/root/lib/modules/$version" "$dest/lib/modules/"
ln -sfn "kernel-$version" "$cache/kernel"
echo "setup.sh: cached Debian's kernel $version in $dest"
