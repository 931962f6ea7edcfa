#!/usr/bin/env bash
# Install mailstack into .venv (first run only) and start the whole system in one process
# on the embedded default: SQLite + files under ./mailstack-data, in-process events.
#   bash scripts/serve.sh              everything
#   bash scripts/serve.sh imap         arguments go to `mailstack serve`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/bootstrap.sh
ensure_venv ""
exec "$VENV/bin/mailstack" serve "$@"
