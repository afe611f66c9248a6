#!/usr/bin/env bash
# Runs every iotlan test on a fresh Debian 12 machine (as root), installing what each needs:
# the package check (scripts/needs.txt), formatting and lints, unit and property tests, store tests,
# simulated-LAN tests, Home Assistant itself on net1, real runtimes (cnitool, podman, containerd), VM tests on a Debian kernel, manifest
# validation, and the static amd64/arm64 binaries. One release build serves them all. Every stage runs even
# when an earlier one failed; the summary (scripts/test-summary) counts passed, failed and skipped tests, a
# stage that failed before its tests as a failure, and lists every skip with its reason. CI=true turns a
# missing prerequisite into a failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH" CARGO_TERM_COLOR=never
logs=$(mktemp -d /tmp/iotlan-test.XXXXXX)
start=$(date +%s)
stage() { printf '\n==== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }
: >"$logs/stages"
# Runs one step, keeping its output in $logs/<name>.log; a failing step is recorded (the summary counts
# it) and the remaining steps still run, so one run shows everything that is broken.
check() {
    local name=$1; shift
    if "$@" 2>&1 | tee "$logs/$name.log"; then
        echo "$name ok" >>"$logs/stages"
    else
        echo "$name failed" >>"$logs/stages"
    fi
}

stage "packages the setups rely on, by name (scripts/needs.txt)"
# The checks and the summary are python3, which a bare Debian lacks.
scripts/apt-install python3
check packages scripts/check-packages

stage "install what the tests need"
check setup-build bash scripts/setup.sh
check setup-runtimes bash tests/runtimes/setup.sh
check setup-vm bash vm-tests/setup.sh
check setup-manifests bash manifests/setup.sh
check setup-ha bash tests/ha/setup.sh
check setup-static bash scripts/build-static.sh --setup-only
check packages-installed scripts/check-packages --installed --self-test

stage "format and lints"
check fmt cargo fmt --all -- --check
check clippy cargo clippy --release --workspace --all-targets --all-features -- -D warnings

stage "build (release, once)"
check build cargo build --release --workspace --all-targets --all-features
export IOTLAN_BIN_DIR="$PWD/target/release"

stage "unit, property, store, simulated-LAN and real-runtime tests"
# --show-output prints what passing tests printed, so the summary sees their SKIP: lines.
check cargo cargo test --release --workspace --all-features --no-fail-fast -- --show-output

stage "VM tests (qemu, Debian kernel)"
check vm vm-tests/run

stage "manifests (kustomize, kubernetes-validate, checkov, yamllint, our own checks)"
check manifests python3 -m pytest -q -rs manifests/tests

stage "static binaries (x86_64 and aarch64 musl; arm64 run under qemu-user)"
check static bash scripts/check-static.sh

stage "summary"
rc=0
python3 scripts/test-summary "$logs" || rc=$?
echo "total time: $(( $(date +%s) - start ))s (logs: $logs)"
exit "$rc"
