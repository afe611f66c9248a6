#!/usr/bin/env bash
# Installs what building iotlan and its simulated-LAN tests need on a fresh Debian 12 (root):
# Debian packages and the Rust components. Idempotent and quiet. Each test area has its own
# setup script for the rest (tests/runtimes, vm-tests, manifests, scripts/build-static.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/support/setup.sh
pkgs=(build-essential pkg-config python3 python3-pip ca-certificates git)
scripts/apt-install "${pkgs[@]}"

if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: no Rust toolchain (cargo) found; install rustup first" >&2
        exit 1
    fi
fi
if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt >/dev/null
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >/dev/null
fi
