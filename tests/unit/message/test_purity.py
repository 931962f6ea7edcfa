"""The message library depends on no service, no storage and not the gRPC API module (ADR 0013):
every service and storage may use it, so it may use none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import mailstack.message as message
import mailstack.services.imap.protocol as imap_protocol
import mailstack.storage as storage

FORBIDDEN = ("mailstack.services", "mailstack.storage", "mailstack.v1.mailstore_pb2", "mailstack.v1.send_pb2")
FORBIDDEN_IO = {"asyncio", "socket", "ssl", "selectors", "grpc", "redis", "boto3", "threading"}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]  # from mailstack.v1 import mailstore_pb2
    return names


def _modules() -> list[Path]:
    paths = sorted(Path(message.__file__).parent.rglob("*.py"))
    assert len(paths) > 10, "the message library's modules were not found"
    return paths


def test_message_library_imports_no_service_storage_or_api_module() -> None:
    for path in _modules():
        for name in _imports(path):
            assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), f"{path.name} imports {name}"


def test_message_library_does_no_network_io() -> None:
    for path in _modules():
        for name in _imports(path):
            assert name.split(".")[0] not in FORBIDDEN_IO, f"{path.name} imports {name}"


def test_the_check_sees_a_wrong_way_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from mailstack.v1 import mailstore_pb2 as pb\nimport mailstack.storage.errors\n")
    assert "mailstack.v1.mailstore_pb2" in _imports(bad) and "mailstack.storage.errors" in _imports(bad)


def test_storage_and_the_imap_protocol_layer_take_structures_from_the_library() -> None:
    # ENVELOPE and BODYSTRUCTURE come from mailstack.message.structure, not from the gRPC API module
    paths = [*Path(storage.__file__).parent.rglob("*.py"), *Path(imap_protocol.__file__).parent.glob("*.py")]
    for path in paths:
        for name in _imports(path):
            assert not name.startswith("mailstack.v1.mailstore_pb2"), f"{path} imports {name}"
