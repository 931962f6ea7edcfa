"""The protocol layer stays sans-IO: no event loop, network, RPC or Redis imports (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import mailstack.services.imap.protocol as protocol

FORBIDDEN = {"asyncio", "socket", "ssl", "selectors", "grpc", "redis", "boto3", "threading"}


def test_protocol_modules_import_no_io() -> None:
    for path in Path(protocol.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
