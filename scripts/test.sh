#!/usr/bin/env bash
# The whole check, as CI runs it: works on a fresh Debian machine with only Python 3.11.
#   bash scripts/test.sh                 everything
#   bash scripts/test.sh tests/unit -x   arguments go to pytest (lint and types still run)
# Creates .venv if missing, installs the package with its test extra, installs the
# Debian client packages the end-to-end tests use, then: ruff, ruff format, mypy, pytest.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

say() { printf '\n== %s\n' "$*"; }
die() { printf '\ntest.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- setup (stops at the first failure)

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or later"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than 3.11"
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        # Debian ships venv/ensurepip separately.
        [ "$(id -u)" -eq 0 ] || die "the Python venv module is missing: run as root: apt-get install python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || die "installing python3-venv failed"
    fi
    "$PYTHON" -m venv "$VENV" || { rm -rf "$VENV"; die "creating the virtualenv failed"; }
fi

# Reinstall only when the packaging files changed (pip takes seconds even when nothing is to do).
stamp="$VENV/.mailstack-installed"
want=$(cat pyproject.toml setup.py | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing mailstack[test] into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' || die "pip install failed"
    echo "$want" > "$stamp"
fi

say "client packages"
bash scripts/install_clients.sh || die "client packages missing (see above)"

# ---------------------------------------------------------------- checks (all run; summary at the end)

declare -a names=() results=()
check() {
    local name=$1; shift
    say "$name: $*"
    "$@"
    local rc=$?
    names+=("$name")
    results+=("$rc")
    return 0
}

check "ruff check" "$VENV/bin/ruff" check .
check "ruff format" "$VENV/bin/ruff" format --check .
check "mypy" env PYTHON="$VENV/bin/python" bash scripts/typecheck.sh

pytest_tests() {
    "$VENV/bin/pytest" "$@"
    local rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "test.sh: pytest collected no tests (check the arguments: $*)" >&2
        return 1
    fi
    return "$rc"
}
# The proto drift check is tests/unit/test_proto_drift.py, part of this run.
check "pytest" pytest_tests "$@"

say "summary"
failed=0
for i in "${!names[@]}"; do
    if [ "${results[$i]}" -eq 0 ]; then
        printf '  %-12s ok\n' "${names[$i]}"
    else
        printf '  %-12s FAILED (exit %s)\n' "${names[$i]}" "${results[$i]}"
        failed=1
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "test.sh: FAILED"
    exit 1
fi
echo "test.sh: all checks passed"
