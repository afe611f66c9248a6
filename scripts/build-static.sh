#!/usr/bin/env bash
# Static (musl) builds of the one `iotlan` executable for amd64 and arm64 (Raspberry Pi), with the `dist`
# profile (Cargo.toml: fat LTO, one codegen unit, stripped), copied to dist/linux-amd64/ and dist/linux-arm64/
# for the image (Containerfile), with `iotlan-ipam` and `kubectl-iotlan` as hard links of it: the binary
# dispatches on argv[0] (CNI IPAM plugin, kubectl plugin).
#
#   scripts/build-static.sh               install what is missing, build both, copy to dist/
#   scripts/build-static.sh --setup-only  only install: rustup targets, gcc-aarch64-linux-gnu
#                                         (ring's C for arm64), qemu-user-static (check-static.sh)
#
# Idempotent and quiet. Links aarch64 with rust-lld (.cargo/config.toml). Honors CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

setup() {
    local installed t
    installed=$(rustup target list --installed)
    for t in "${TARGETS[@]}"; do
        grep -qx "$t" <<<"$installed" || rustup target add "$t" >/dev/null
    done
    # libc6-dev-arm64-cross (the target libc headers ring's C includes) is only a Recommends of
    # gcc-aarch64-linux-gnu, and apt-install skips Recommends: it is named (scripts/needs.txt).
    scripts/apt-install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static file
}

setup
[ "${1:-}" = "--setup-only" ] && exit 0

target_dir=${CARGO_TARGET_DIR:-target}
# Panic messages name a dependency's file from its crate's directory (kube-client-5.0.0/src/...), not
# under $CARGO_HOME/registry/src/<index>/: the binary does not depend on where cargo keeps its
# sources, and its ~600 such file names are ~35 KB shorter. (Merged with .cargo/config.toml's flags.)
remap=""
for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
    [ -d "$d" ] && remap+="${remap:+,}\"--remap-path-prefix=${d%/}=\""
done
args=()
for t in "${TARGETS[@]}"; do args+=(--target "$t" --config "target.$t.rustflags=[$remap]"); done
start=$(date +%s)
cargo build --profile dist --locked -p iotlan --bin iotlan "${args[@]}"
echo "build-static: built in $(( $(date +%s) - start ))s"
for t in "${TARGETS[@]}"; do
    case $t in x86_64-*) arch=amd64 ;; aarch64-*) arch=arm64 ;; esac
    dir=dist/linux-$arch
    mkdir -p "$dir"
    install -m 0755 "$target_dir/$t/dist/iotlan" "$dir/.iotlan.tmp"
    mv -f "$dir/.iotlan.tmp" "$dir/iotlan"
    for name in iotlan-ipam kubectl-iotlan; do
        ln -f "$dir/iotlan" "$dir/$name"
    done
    echo "build-static: $dir: iotlan $(stat -c %s "$dir/iotlan") bytes (iotlan-ipam and kubectl-iotlan: hard links of it)"
done
