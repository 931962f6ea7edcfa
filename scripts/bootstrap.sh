# Sourced by serve.sh and test.sh: make .venv and install mailstack into it, on a fresh
# Debian machine with only Python 3.11 (as root it installs python3-venv when missing).
#   ensure_venv ""        the package alone
#   ensure_venv "[test]"  with the test extra
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

say() { printf '\n== %s\n' "$*"; }
die() { printf '\n%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

ensure_venv() {
    local extras=$1
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or later"
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than 3.11"
        if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
            # Debian ships venv/ensurepip separately.
            [ "$(id -u)" -eq 0 ] || die "the Python venv module is missing: run as root: apt-get install python3-venv"
            # A freshly booted machine runs its own apt (unattended-upgrades): wait for its lock.
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq && \
                DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv \
                >/dev/null \
                || die "installing python3-venv failed"
        fi
        "$PYTHON" -m venv "$VENV" || { rm -rf "$VENV"; die "creating the virtualenv failed"; }
    fi
    # Reinstall only when the packaging files or the extras changed (pip takes seconds even idle).
    local stamp="$VENV/.mailstack-installed" want
    want=$( (cat pyproject.toml setup.py; echo "$extras") | "$VENV/bin/python" -c \
        'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing mailstack$extras into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".$extras" || die "pip install failed"
        echo "$want" > "$stamp"
    fi
}
