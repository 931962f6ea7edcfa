#!/usr/bin/env bash
# Unused functions, classes, attributes and constants (vulture). Frameworks that call by name are
# ignored by pattern here, single names are listed with their reason in scripts/vulture_whitelist.py.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-.venv/bin/python}" -m vulture mailstack message services storage bench tests scripts/vulture_whitelist.py \
    --min-confidence 60 \
    --exclude '*_pb2.py,*_pb2_grpc.py,.typecheck' \
    --ignore-decorators "@rule,@initialize,@invariant,@precondition" \
    --ignore-names 'handle_*,smtp_*,auth_*,_cmd_*,intercept_*,pytestmark,pytest_plugins' \
    "$@"
