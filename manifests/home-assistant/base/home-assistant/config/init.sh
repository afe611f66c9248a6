#!/bin/sh
# Runs in the init container before Home Assistant starts.
set -eu
# 1. Link every include from the ConfigMap directory mount; drop links whose key was removed.
mkdir -p /config/k8s
find /config/k8s -maxdepth 1 -type l -exec rm -f {} +
for f in /includes/*.yaml; do
    ln -s "$f" "/config/k8s/${f##*/}"
done
# 2. First run only: a configuration.yaml that uses the includes.
if [ ! -s /config/configuration.yaml ]; then
    cp /seed/configuration.yaml /config/configuration.yaml
fi
# 3. First run only: reverse-proxy trust. Since 2026.8 HA keeps it in .storage/http (the YAML http: block is
#    imported once and then ignored), so it is seeded here; change it later in the UI or delete the file and
#    restart to re-seed it from this ConfigMap.
mkdir -p /config/.storage
if [ ! -s /config/.storage/http ]; then
    cp /seed/http.json /config/.storage/http
fi
