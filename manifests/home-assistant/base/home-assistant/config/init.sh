#!/bin/sh
# Runs in the init container before Home Assistant starts.
set -eu
# 1. Link every include from the ConfigMap directory mount; drop links whose key was removed.
mkdir -p /config/k8s
find /config/k8s -maxdepth 1 -type l -exec rm -f {} +
for f in /includes/*.yaml; do
    ln -s "$f" "/config/k8s/${f##*/}"
done
# 2. First run only: a configuration.yaml that uses the includes. Every start: the files it includes that the
#    UI's editors write, created as Home Assistant's own first start does (_write_default_config in
#    homeassistant/config.py: automations.yaml holds "[]", scripts.yaml and scenes.yaml are empty), so that a
#    configuration.yaml of an older seed, once given the include lines, finds them.
if [ ! -s /config/configuration.yaml ]; then
    cp /seed/configuration.yaml /config/configuration.yaml
fi
[ -e /config/automations.yaml ] || printf '[]' >/config/automations.yaml
[ -e /config/scripts.yaml ] || : >/config/scripts.yaml
[ -e /config/scenes.yaml ] || : >/config/scenes.yaml
mkdir -p /config/themes
# 3. First run only: reverse-proxy trust. Since 2026.8 HA keeps its http settings in .storage/http, a store
#    at version 2 (homeassistant/components/http/config.py): `stable` is what HA boots with, `pending` an
#    unconfirmed trial that HA reverts after 5 minutes, `yaml_migration_done` says the http: YAML block was
#    already imported. The seed is that version-2 file with our settings in `stable`, no `pending` and the
#    migration marked done, so HA neither migrates it nor imports YAML defaults over it. (A version-1 file, or
#    an http: block in configuration.yaml, would end up in `pending`: 400 through the Ingress, then a revert.)
#    Change it later under Settings -> System -> Network, or delete the file and restart HA to re-seed it.
mkdir -p /config/.storage
if [ ! -s /config/.storage/http ]; then
    cp /seed/http.json /config/.storage/http
    chmod 0600 /config/.storage/http  # HA writes this store as a private file
fi
