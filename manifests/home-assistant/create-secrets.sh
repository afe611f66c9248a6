#!/usr/bin/env bash
# Creates the Secrets the home-assistant manifests read, with random values, in namespace home-assistant.
# Run it again any time (to add Authelia later, or after deleting one Secret to rotate it): every value that
# exists is kept, and only what is missing is generated. An initialised PostgreSQL keeps the password it was
# created with, Node-RED encrypts its credentials with its secret and LAN devices keep their MQTT password, so
# rotating any of them by accident would break a running install. Needs kubectl and python3.
#   ./create-secrets.sh                   # create the missing Secrets in the cluster
#   ./create-secrets.sh --dry-run DIR     # write the missing ones as YAML files into DIR (e.g. to encrypt with
#                                         # SOPS); files already in DIR are kept byte for byte
# Authelia's users file needs a password hash made by Authelia itself; see manifests/README.md.
set -euo pipefail

NS=home-assistant
HERE=$(cd "$(dirname "$0")" && pwd)
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

have() {
    if [ -n "$OUT" ]; then [ -s "$OUT/$1.yaml" ]; else kubectl -n "$NS" get secret "$1" >/dev/null 2>&1; fi
}

# value NAME KEY: the plaintext of one key of an existing Secret (a file of DIR with --dry-run).
value() {
    if [ -n "$OUT" ]; then
        python3 - "$OUT/$1.yaml" "$2" <<'PY'
import base64, re, sys
path, key = sys.argv[1], sys.argv[2]
text = open(path).read()
m = re.search(r"(?m)^  " + re.escape(key) + r": (\S+)$", text)
if not m or m.group(1).startswith("ENC["):
    sys.exit(f"create-secrets: cannot read {key} from {path} (encrypted with sops? decrypt it, or delete the file to regenerate it)")
print(base64.b64decode(m.group(1)).decode())
PY
    else
        kubectl -n "$NS" get secret "$1" -o "jsonpath={.data.$2}" | base64 -d
    fi
}

# write NAME --from-literal=k=v ...: create (or, with --dry-run, write) one generic Secret, replacing one that
# exists. Files are written whole, through a temporary file.
write() {
    local name=$1; shift
    if [ -n "$OUT" ]; then
        kubectl create secret generic "$name" -n "$NS" "$@" --dry-run=client -o yaml >"$OUT/.$name.yaml.tmp"
        mv -f "$OUT/.$name.yaml.tmp" "$OUT/$name.yaml"
        echo "wrote $OUT/$name.yaml"
    elif have "$name"; then
        kubectl create secret generic "$name" -n "$NS" "$@" --dry-run=client -o yaml | kubectl replace -f -
    else
        kubectl create secret generic "$name" -n "$NS" "$@"
    fi
}

# make NAME ...: write NAME unless it exists.
make() {
    local name=$1; shift
    if have "$name"; then echo "secret/$name exists, kept"; return; fi
    write "$name" "$@"
}

if [ -z "$OUT" ] && ! kubectl get namespace "$NS" >/dev/null 2>&1; then
    kubectl apply -k "$HERE/namespace"  # its one owner (manifests/README.md, "Apply order")
fi

make postgres-superuser --from-literal=password="$(rand)"

if ! have home-assistant-db; then
    db_password=$(rand)
    write home-assistant-db \
        --from-literal=database=homeassistant \
        --from-literal=username=homeassistant \
        --from-literal=password="$db_password" \
        --from-literal=db-url="postgresql://homeassistant:${db_password}@postgres.${NS}.svc.cluster.local:5432/homeassistant"
else
    echo "secret/home-assistant-db exists, kept"
fi

# MQTT users: each client's plaintext in its own Secret, their hashes in Mosquitto's password file. A user whose
# client Secret exists keeps its password and its line of the password file; a missing one gets a new password,
# and the password file is rewritten with the kept lines plus the new ones.
passwd_file=$(mktemp)
trap 'rm -f "$passwd_file"' EXIT
old_passwd=""
have mosquitto-passwd && old_passwd=$(value mosquitto-passwd passwd)
changed=0
have mosquitto-passwd || changed=1
for entry in homeassistant:mqtt-home-assistant zigbee2mqtt:mqtt-zigbee2mqtt nodered:mqtt-node-red devices:mqtt-devices; do
    user=${entry%%:*} secret=${entry#*:}
    old_line=$(printf '%s\n' "$old_passwd" | grep "^$user:" || true)
    if have "$secret" && [ -n "$old_line" ]; then
        echo "secret/$secret exists, kept"
        printf '%s\n' "$old_line" >>"$passwd_file"
        continue
    fi
    if have "$secret"; then
        password=$(value "$secret" password)  # the password file lost this user: hash the kept password again
        echo "secret/$secret exists, kept"
    else
        # LAN devices (Shelly, Tasmota, ESPHome) share one user; 24 characters fit every firmware's password field.
        if [ "$user" = devices ]; then password=$(python3 -c 'import secrets; print(secrets.token_hex(12))'); else password=$(rand); fi
        # For the user to read when setting up each client (host mosquitto, or mosquittoLanIp for devices, port 1883).
        write "$secret" --from-literal=username="$user" --from-literal=password="$password"
    fi
    mosquitto_line "$user" "$password" >>"$passwd_file"
    changed=1
done
if [ "$changed" = 1 ]; then
    write mosquitto-passwd --from-file=passwd="$passwd_file"
    have mosquitto-passwd && [ -n "$old_passwd" ] &&
        echo "mosquitto reads its password file at start: kubectl -n $NS rollout restart statefulset mosquitto"
else
    echo "secret/mosquitto-passwd exists, kept"
fi

make zwave-js-ui --from-literal=session-secret="$(rand)"
make node-red --from-literal=credential-secret="$(rand)"
make code-server --from-literal=password="$(rand)"

if have authelia; then
    echo "secret/authelia exists, kept"
elif [ -n "${AUTHELIA_USERS_FILE:-}" ]; then
    write authelia \
        --from-literal=jwt-secret="$(rand)" \
        --from-literal=session-secret="$(rand)" \
        --from-literal=storage-encryption-key="$(rand)" \
        --from-file=users_database.yml="$AUTHELIA_USERS_FILE"
else
    echo "secret/authelia skipped: set AUTHELIA_USERS_FILE to your users_database.yml (see manifests/README.md)"
fi

# --dry-run: make DIR a kustomization Flux can apply (manifests/flux/home-assistant/ks.yaml), so that the
# files only need `sops --encrypt --in-place` (rules in manifests/flux/secrets/.sops.yaml) before they are
# committed. The namespace is not among them: manifests/home-assistant/namespace is its one owner.
if [ -n "$OUT" ]; then
    [ -e "$OUT/namespace.yaml" ] &&
        echo "note: $OUT/namespace.yaml is no longer used (manifests/home-assistant/namespace owns the namespace): delete it"
    {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "resources:"
        for f in "$OUT"/*.yaml; do
            case "${f##*/}" in kustomization.yaml | namespace.yaml) ;; *) echo "  - ${f##*/}" ;; esac
        done
    } >"$OUT/.kustomization.yaml.tmp"
    mv -f "$OUT/.kustomization.yaml.tmp" "$OUT/kustomization.yaml"
    echo "wrote $OUT/kustomization.yaml: encrypt the Secret files with sops before committing them"
fi
