#!/usr/bin/env bash
# Runs every iotlan test on a fresh Debian 12 machine (as root), installing what each needs:
# formatting and lints, unit and property tests, store tests, simulated-LAN tests, real runtimes
# (cnitool, podman, containerd), VM tests on a Debian kernel, manifest validation, and the static
# amd64/arm64 binaries. One release build serves them all. Prints a summary line at the end.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH" CARGO_TERM_COLOR=never
logs=$(mktemp -d /tmp/iotlan-test.XXXXXX)
start=$(date +%s)
stage() { printf '\n==== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }
failures=()
# Runs a test stage, keeping its output in $logs/<name>.log; a failing stage is recorded and the
# remaining stages still run, so one run shows everything that is broken.
check() {
    local name=$1; shift
    if ! "$@" 2>&1 | tee "$logs/$name.log"; then
        failures+=("$name")
    fi
}

stage "install what the tests need"
bash scripts/setup.sh
bash tests/runtimes/setup.sh
bash vm-tests/setup.sh
bash manifests/setup.sh
bash scripts/build-static.sh --setup-only

stage "format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --all-features -- -D warnings

stage "build (release, once)"
cargo build --release --workspace --all-targets --all-features
export IOTLAN_BIN_DIR="$PWD/target/release"

stage "unit, property, store, simulated-LAN and real-runtime tests"
check cargo cargo test --release --workspace --all-features --no-fail-fast

stage "VM tests (qemu, Debian kernel)"
check vm vm-tests/run

stage "manifests (kustomize, kubernetes-validate, checkov, yamllint, our own checks)"
check manifests python3 -m pytest -q manifests/tests

stage "static binaries (x86_64 and aarch64 musl; arm64 run under qemu-user)"
check static bash scripts/check-static.sh

stage "summary"
python3 - "$logs" <<'PY'
import re, sys, pathlib
logs = pathlib.Path(sys.argv[1])
passed = failed = 0
for line in (logs / "cargo.log").read_text().splitlines():
    m = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed", line)
    if m:
        passed += int(m[1]); failed += int(m[2])
print(f"cargo: {passed} passed, {failed} failed")
for name in ["vm.log", "manifests.log", "static.log"]:
    text = (logs / name).read_text()
    p = sum(int(x) for x in re.findall(r"(\d+) passed", text.splitlines()[-1] if text.strip() else ""))
    f = sum(int(x) for x in re.findall(r"(\d+) failed", text.splitlines()[-1] if text.strip() else ""))
    print(f"{name[:-4]}: {p} passed, {f} failed")
    passed += p; failed += f
print(f"all: {passed} passed, {failed} failed")
PY
echo "total time: $(( $(date +%s) - start ))s"
if ((${#failures[@]})); then
    echo "failed stages: ${failures[*]}" >&2
    exit 1
fi
