#!/usr/bin/env bash
# Builds the static binaries (scripts/build-static.sh) and checks them: statically linked, for the right
# machine, and they run: `iotlan --help`, `iotlan install --help`, and the CNI VERSION verb of `iotlan` and
# `iotlan-ipam` with empty stdin. amd64 runs natively; arm64 runs under qemu-aarch64-static (qemu-user-static).
#   scripts/check-static.sh [--no-build]
# Prints one line per check and ends with "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--no-build" ] || bash scripts/build-static.sh
passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

for arch in amd64 arm64; do
    dir=dist/linux-$arch
    case $arch in
        amd64) machine="x86-64"; run=() ;;
        arm64) machine="ARM aarch64"; run=(qemu-aarch64-static) ;;
    esac
    if [ "$arch" = arm64 ] && ! command -v qemu-aarch64-static >/dev/null; then
        bad "$arch: qemu-aarch64-static missing (scripts/build-static.sh --setup-only installs qemu-user-static)"
        continue
    fi
    for b in iotlan iotlan-ipam; do
        desc=$(file -b "$dir/$b" 2>&1 || true)
        if [[ $desc == *"$machine"* && ( $desc == *"statically linked"* || $desc == *"static-pie linked"* ) ]]; then
            ok "$arch $b: static $machine, $(stat -c %s "$dir/$b") bytes"
        else
            bad "$arch $b: $desc"
        fi
        out=$(env -i PATH=/usr/bin:/bin CNI_COMMAND=VERSION "${run[@]}" "$dir/$b" </dev/null 2>&1) && rc=0 || rc=$?
        if [ "$rc" = 0 ] && python3 -c 'import json,sys; v=json.loads(sys.argv[1]); assert {"0.3.1","1.0.0","1.1.0"} <= set(v["supportedVersions"]), v' "$out" 2>/dev/null; then
            ok "$arch $b: CNI VERSION -> $out"
        else
            bad "$arch $b: CNI VERSION (exit $rc): $out"
        fi
    done
    for args in "--help" "install --help"; do
        # shellcheck disable=SC2086
        out=$(env -i PATH=/usr/bin:/bin "${run[@]}" "$dir/iotlan" $args 2>&1) && rc=0 || rc=$?
        if [ "$rc" = 0 ] && grep -q "iotlan" <<<"$out"; then
            ok "$arch iotlan $args: $(head -n1 <<<"$out")"
        else
            bad "$arch iotlan $args (exit $rc): $out"
        fi
    done
done
echo "static: $passed passed, $failed failed"
echo "$passed passed, $failed failed"
((failed == 0))
