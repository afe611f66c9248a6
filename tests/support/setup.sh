#!/usr/bin/env bash
# Installs what the simulated-LAN tests (tests/support, tests/lan/) and the durability test (strace) need on Debian 12.
# Idempotent and quiet: only missing packages are installed.
set -euo pipefail

pkgs=(iproute2 iputils-ping nftables containernetworking-plugins strace)
"$(dirname "$0")/../../scripts/apt-install" "${pkgs[@]}"
