#!/usr/bin/env bash
# The whole check, as CI runs it: works on a fresh Debian machine with only Python 3.11.
#   bash scripts/test.sh                 everything
#   bash scripts/test.sh tests/unit -x   arguments go to pytest (lint and types still run)
# Creates .venv if missing, installs the package with its test extra, installs the
# Debian client packages the end-to-end tests use, then: ruff, ruff format, mypy, pytest.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/bootstrap.sh
ensure_venv "[test]"

say "client packages"
bash scripts/install_clients.sh || die "client packages missing (see above)"
bash scripts/install_buf.sh || die "buf (the proto linter) missing (see above)"

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
if [ "$#" -eq 0 ]; then
    # The all-in-one process calls its mailstore in-process (ADR 0039); the end-to-end suite runs
    # again with every frontend on gRPC, the transport of the deployed shape.
    check "pytest e2e, gRPC transport" env MAILSTACK_TEST_MAILSTORE_TRANSPORT=grpc "$VENV/bin/pytest" tests/e2e
fi

say "summary"
failed=0
for i in "${!names[@]}"; do
    if [ "${results[$i]}" -eq 0 ]; then
        printf '  %-28s ok\n' "${names[$i]}"
    else
        printf '  %-28s FAILED (exit %s)\n' "${names[$i]}" "${results[$i]}"
        failed=1
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "test.sh: FAILED"
    exit 1
fi
echo "test.sh: all checks passed"
