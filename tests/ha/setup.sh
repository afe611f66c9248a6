#!/usr/bin/env bash
# Installs what tests/ha.rs needs on Debian 12, as root. Idempotent: each part is skipped when it is
# there and matches its pin.
#  - the simulated-LAN needs (tests/support/setup.sh)
#  - CPython 3.13.5 in /opt/iotlan/python-3.13.5: Home Assistant 2026 needs Python >= 3.13.2 and
#    Debian 12 has 3.11. The source is Debian trixie's python3.13 source package (its upstream tarball,
#    checked against the pinned sha256), fetched with `apt-get source` through a private deb-src list
#    (nothing changes the system's apt sources), and built with bookworm's own toolchain and -dev
#    packages. Only files under that prefix are installed: the system's libc and python3 stay as they
#    are. About 3 minutes of CPU on 2 cores.
#  - a virtual environment on it, /opt/iotlan/ha-2026.2.3, with tests/ha/requirements.txt (every
#    version pinned; homeassistant 2026.2.3 and the requirements of the integrations the test loads),
#    marked complete by .iotlan-requirements.sha256 only once installed and checked.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

PY_VERSION=3.13.5
# sha256 of python3.13_3.13.5.orig.tar.xz, as listed in trixie's Sources index (python3.13 3.13.5-2+deb13u5).
PY_ORIG_SHA256=93e583f243454e6e9e4588ca2c2662206ad961659863277afcdb96801647d640
PY_PREFIX=/opt/iotlan/python-$PY_VERSION
HA_VERSION=2026.2.3
VENV=/opt/iotlan/ha-$HA_VERSION
REQUIREMENTS=$here/requirements.txt

log() { printf 'tests/ha/setup.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

bash "$here/../support/setup.sh"
pkgs=(build-essential pkg-config xz-utils ca-certificates libssl-dev libffi-dev zlib1g-dev libsqlite3-dev
    libbz2-dev liblzma-dev uuid-dev)
"$repo/scripts/apt-install" "${pkgs[@]}"

# The modules Home Assistant and its dependencies use from the standard library that need a -dev
# package at build time: a Python built without one of them would start and then fail in the test.
python_ok() {
    [[ -x $PY_PREFIX/bin/python3.13 ]] && "$PY_PREFIX/bin/python3.13" - "$PY_VERSION" <<'PY'
import platform, sys
import bz2, ctypes, lzma, sqlite3, ssl, uuid, zlib  # noqa: F401
sys.exit(0 if platform.python_version() == sys.argv[1] else 1)
PY
}

work=""
cleanup() { [[ -z $work ]] || rm -rf "$work"; }
trap cleanup EXIT

if ! python_ok 2>/dev/null; then
    started=$(date +%s)
    work=$(mktemp -d /tmp/iotlan-python.XXXXXX)
    apt_dir=$work/apt
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    # A deb-src entry for trixie on the system's own Debian mirror and keyring: the main archive's
    # stanza (the one whose Suites name the release itself), with its suite replaced.
    . /etc/os-release
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v RS= -v ORS='\n\n' -v rel="$VERSION_CODENAME" \
            '/Signed-By:[^\n]*debian-archive-keyring/ && $0 ~ "Suites:[^\n]*(^|[ \t])" rel "([ \t\n]|$)"' "$f" |
            sed -e 's/^Types: .*/Types: deb-src/' -e 's/^Suites: .*/Suites: trixie/' \
                -e 's/^Components: .*/Components: main/' >>"$apt_dir/sources.list.d/src.sources"
    done
    : >"$apt_dir/src.list"
    if [[ -f /etc/apt/sources.list ]]; then
        awk -v rel="$VERSION_CODENAME" '$1 == "deb" && $3 == rel { print "deb-src", $2, "trixie main"; exit }' \
            /etc/apt/sources.list >"$apt_dir/src.list"
    fi
    [[ -s $apt_dir/sources.list.d/src.sources || -s $apt_dir/src.list ]] ||
        die "no Debian $VERSION_CODENAME entry in the apt sources to derive a trixie deb-src entry from"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/src.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
    log "fetching trixie's python3.13 source (apt-get source --download-only)"
    apt-get "${apt_opts[@]}" -qq update >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; die "apt-get update (trixie deb-src) failed"; }
    (cd "$work" && apt-get "${apt_opts[@]}" -qq source --download-only python3.13 >>"$work/apt.log" 2>&1) ||
        { cat "$work/apt.log" >&2; die "apt-get source python3.13 failed"; }
    orig=$work/python3.13_$PY_VERSION.orig.tar.xz
    [[ -f $orig ]] || die "trixie's python3.13 is no longer $PY_VERSION ($(cd "$work" && ls python3.13_* | tr '\n' ' ')): update PY_VERSION and PY_ORIG_SHA256"
    echo "$PY_ORIG_SHA256  $orig" | sha256sum -c --quiet - || die "$orig does not match the pinned sha256"
    tar -C "$work" -xf "$orig"
    src=$work/Python-$PY_VERSION
    [[ -x $src/configure ]] || die "no Python-$PY_VERSION/configure in $orig"
    log "building CPython $PY_VERSION into $PY_PREFIX ($(nproc) jobs; logs in $work until it ends)"
    (cd "$src" && ./configure --prefix="$PY_PREFIX" --with-ensurepip=install >"$work/configure.log" 2>&1) ||
        { tail -n 40 "$work/configure.log" >&2; die "configure failed"; }
    (cd "$src" && make -j"$(nproc)" >"$work/make.log" 2>&1) || { tail -n 40 "$work/make.log" >&2; die "make failed"; }
    # Installed into a staging root first, so that the prefix is either absent or complete.
    (cd "$src" && make altinstall DESTDIR="$work/stage" >"$work/install.log" 2>&1) ||
        { tail -n 40 "$work/install.log" >&2; die "make altinstall failed"; }
    mkdir -p "$(dirname "$PY_PREFIX")"
    rm -rf "$PY_PREFIX"
    mv "$work/stage$PY_PREFIX" "$PY_PREFIX"
    python_ok || die "the CPython built in $PY_PREFIX lacks a module or is not $PY_VERSION"
    log "CPython $PY_VERSION built in $(( $(date +%s) - started ))s"
fi

want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
stamp=$VENV/.iotlan-requirements.sha256
if [[ -L $VENV || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    started=$(date +%s)
    log "installing Home Assistant $HA_VERSION and its pinned requirements into $VENV"
    rm -rf "$VENV"
    "$PY_PREFIX/bin/python3.13" -m venv "$VENV"
    # --no-deps: exactly the pinned set; pip check below proves it is complete and consistent.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$REQUIREMENTS"
    "$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check >&2; die "the venv's requirements are inconsistent"; }
    got=$("$VENV/bin/python" -c 'from homeassistant.const import __version__; print(__version__)')
    [[ $got == "$HA_VERSION" ]] || die "the venv holds Home Assistant $got, not $HA_VERSION"
    echo "$want" >"$stamp.tmp"
    mv "$stamp.tmp" "$stamp"
    log "venv ready in $(( $(date +%s) - started ))s"
fi
