#!/usr/bin/env bash
# mypy cannot follow setuptools' editable-install import hook, so give it the installed
# layout as a tree of symlinks: mailstack/{services,storage,message,v1} -> the design card's folders.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.typecheck/mailstack
rm -rf .typecheck && mkdir -p "$tree"
for f in mailstack/*; do [ "$(basename "$f")" = __pycache__ ] || ln -s "$PWD/$f" "$tree/$(basename "$f")"; done
ln -s "$PWD/services" "$tree/services"
ln -s "$PWD/storage" "$tree/storage"
ln -s "$PWD/message" "$tree/message"
ln -s "$PWD/proto/mailstack/v1" "$tree/v1"
# The tests and benchmarks are held to the same settings as the package.
MYPYPATH=.typecheck "${PYTHON:-.venv/bin/python}" -m mypy -p mailstack -p tests -p bench "$@"
