#!/usr/bin/env bash
# Creates the Secrets the home-assistant manifests read, with random values, in namespace home-assistant.
# Idempotent: a Secret that already exists is left alone (delete it to regenerate). Needs kubectl and python3.
#   ./create-secrets.sh                   # create the missing Secrets in the cluster
#   ./create-secrets.sh --dry-run DIR     # write them as YAML files into DIR instead (e.g. to encrypt with SOPS)
# Authelia's users file needs a password hash made by Authelia itself; see manifests/README.md.
set -euo pipefail

NS=home-assistant
OUT=""
if [ "${1:-}" = "--dry-run" ]; then OUT="${2:?--dry-run needs a directory}"; mkdir -p "$OUT"; fi

rand() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }

# Mosquitto's password-file line for USER and PASSWORD: PBKDF2-SHA512, 101 rounds, 12-byte salt ("$7$" format,
# the same as mosquitto_passwd writes).
mosquitto_line() {
    python3 - "$1" "$2" <<'PY'
import base64, hashlib, os, sys
user, password = sys.argv[1], sys.argv[2]
salt = os.urandom(12)
digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
print(f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")
PY
}

exists() { [ -z "$OUT" ] && kubectl -n "$NS" get secret "$1" >/dev/null 2>&1; }

# make NAME --from-literal=k=v ... : create (or, with --dry-run, write) one generic Secret
make() {
    local name=$1; shift
    if exists "$name"; then echo "secret/$name exists, kept"; return; fi
    if [ -n "$OUT" ]; then
        kubectl create secret generic "$name" -n "$NS" "$@" --dry-run=client -o yaml >"$OUT/$name.yaml"
        echo "wrote $OUT/$name.yaml"
    else
        kubectl create secret generic "$name" -n "$NS" "$@"
    fi
}

[ -n "$OUT" ] || kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"

make postgres-superuser --from-literal=password="$(rand)"

db_password=$(rand)
make home-assistant-db \
    --from-literal=database=homeassistant \
    --from-literal=username=homeassistant \
    --from-literal=password="$db_password" \
    --from-literal=db-url="postgresql://homeassistant:${db_password}@postgres.${NS}.svc.cluster.local:5432/homeassistant"

# MQTT users: plaintext for each client's own Secret, hashed in Mosquitto's password file.
if exists mosquitto-passwd; then
    echo "secret/mosquitto-passwd exists, kept (and with it the MQTT client Secrets)"
else
    ha_mqtt=$(rand) z2m_mqtt=$(rand) nodered_mqtt=$(rand)
    # LAN devices (Shelly, Tasmota, ESPHome) share one user; 24 characters fit every firmware's password field.
    devices_mqtt=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
    passwd_file=$(mktemp)
    trap 'rm -f "$passwd_file"' EXIT
    {
        mosquitto_line homeassistant "$ha_mqtt"
        mosquitto_line zigbee2mqtt "$z2m_mqtt"
        mosquitto_line nodered "$nodered_mqtt"
        mosquitto_line devices "$devices_mqtt"
    } >"$passwd_file"
    make mosquitto-passwd --from-file=passwd="$passwd_file"
    # For the user to read when adding HA's MQTT integration (host mosquitto, port 1883).
    make mqtt-home-assistant --from-literal=username=homeassistant --from-literal=password="$ha_mqtt"
    make mqtt-zigbee2mqtt --from-literal=username=zigbee2mqtt --from-literal=password="$z2m_mqtt"
    make mqtt-node-red --from-literal=username=nodered --from-literal=password="$nodered_mqtt"
    # For the devices' own MQTT settings: server = mosquittoLanIp (components/site/site.yaml), port 1883.
    make mqtt-devices --from-literal=username=devices --from-literal=password="$devices_mqtt"
fi

make zwave-js-ui --from-literal=session-secret="$(rand)"
make node-red --from-literal=credential-secret="$(rand)"
make code-server --from-literal=password="$(rand)"

if [ -n "${AUTHELIA_USERS_FILE:-}" ]; then
    make authelia \
        --from-literal=jwt-secret="$(rand)" \
        --from-literal=session-secret="$(rand)" \
        --from-literal=storage-encryption-key="$(rand)" \
        --from-file=users_database.yml="$AUTHELIA_USERS_FILE"
else
    echo "secret/authelia skipped: set AUTHELIA_USERS_FILE to your users_database.yml (see manifests/README.md)"
fi

# --dry-run: make DIR a kustomization Flux can apply (manifests/flux/home-assistant-secrets.yaml), so that the
# files only need `sops --encrypt --in-place` (rules in manifests/flux/.sops.yaml) before they are committed.
if [ -n "$OUT" ]; then
    kubectl create namespace "$NS" --dry-run=client -o yaml >"$OUT/namespace.yaml"
    {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "resources:"
        for f in "$OUT"/*.yaml; do
            case "${f##*/}" in kustomization.yaml) ;; *) echo "  - ${f##*/}" ;; esac
        done
    } >"$OUT/kustomization.yaml"
    echo "wrote $OUT/kustomization.yaml: encrypt the Secret files with sops before committing them"
fi
