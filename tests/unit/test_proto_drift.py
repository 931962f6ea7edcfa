"""The committed stubs under proto/mailstack/v1/ are exactly what scripts/gen_proto.py generates."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "proto" / "mailstack" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", ".pyi")


def load_gen_proto() -> ModuleType:
    # scripts/ is not a package: load the script by path.
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # generate() prepends to PATH; restore it afterwards
    generated = {p.name: p for p in load_gen_proto().generate(tmp_path)}
    assert generated, "gen_proto.generate() wrote no files"
    committed = {p.name: p for p in COMMITTED.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}

    drifted = sorted(name for name in generated if name not in committed)  # missing from the checkout
    drifted += sorted(name for name in committed if name not in generated)  # stale, no .proto any more
    drifted += sorted(
        name
        for name in generated.keys() & committed.keys()
        if generated[name].read_bytes() != committed[name].read_bytes()
    )
    assert not drifted, (
        "generated stubs differ from proto/mailstack/v1/*.proto: "
        + ", ".join(drifted)
        + "\nfix: .venv/bin/python scripts/gen_proto.py (then commit the result)"
    )
