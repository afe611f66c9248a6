#!/usr/bin/env bash
# Installs what the simulated-LAN tests (tests/support, tests/lan.rs) need on Debian 12.
# Idempotent and quiet: only missing packages are installed.
set -euo pipefail

pkgs=(iproute2 iputils-ping nftables containernetworking-plugins)
"$(dirname "$0")/../../scripts/apt-install" "${pkgs[@]}"
