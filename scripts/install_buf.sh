#!/usr/bin/env bash
# Installs buf (the protobuf linter that tests/unit/test_proto_lint.py runs over proto/) into
# .tools/, from npm (@bufbuild/buf ships the official binaries), unless the pinned version is
# there. Needs npm (Debian: apt-get install npm, which scripts/install_clients.sh lists).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUF_VERSION=1.75.0
BUF=.tools/node_modules/.bin/buf

if [ -x "$BUF" ] && [ "$("$BUF" --version 2>/dev/null)" = "$BUF_VERSION" ]; then
    echo "install_buf: buf $BUF_VERSION present"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install_buf: npm is missing (apt-get install npm), so buf cannot be installed" >&2
    exit 1
fi
mkdir -p .tools
npm install --prefix .tools --no-audit --no-fund --loglevel=error "@bufbuild/buf@$BUF_VERSION"
echo "install_buf: installed buf $("$BUF" --version)"
