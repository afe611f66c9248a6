#!/usr/bin/env bash
# Installs what the simulated-LAN tests (tests/support, tests/lan.rs) need on Debian 12.
# Idempotent and quiet: only missing packages are installed.
set -euo pipefail

pkgs=(iproute2 iputils-ping nftables containernetworking-plugins)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi
