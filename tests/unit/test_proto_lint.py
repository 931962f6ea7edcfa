"""The gRPC API's documentation (issue 17): `buf lint` over proto/ with the rules of buf.yaml
(STANDARD + COMMENTS, each exception justified there), and, without buf, a check from the
compiled descriptors' source info that every service, RPC, message, field, oneof, enum and enum
value has a leading doc comment (a trailing one is not what documentation generators show)."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def buf() -> str:
    found = str(BUF) if BUF.exists() else shutil.which("buf")
    assert found, "buf is not installed: run `bash scripts/install_buf.sh` (scripts/test.sh does)"
    return found


def test_buf_lint_is_clean() -> None:
    result = subprocess.run([buf(), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_yaml_justifies_every_exception() -> None:
    """Each rule under `except:` follows a comment (a group of rules may share one)."""
    lines = [line.strip() for line in (ROOT / "buf.yaml").read_text().splitlines()]
    rules = [i for i in range(lines.index("except:") + 1, len(lines)) if lines[i].startswith("- ")]
    assert rules
    for i in rules:
        above = i - 1
        while lines[above].startswith("- "):
            above -= 1
        assert lines[above].startswith("#") and len(lines[above]) > 10, f"buf.yaml: no reason for {lines[i]}"


def descriptors(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "api.pb"
    sources = [str(p.relative_to(PROTO)) for p in sorted(PROTO.glob("mailstack/v1/*.proto"))]
    assert protoc.main(["protoc", f"-I{PROTO}", f"--descriptor_set_out={out}", "--include_source_info", *sources]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str) -> list[tuple[tuple[int, ...], str]]:
    # Field numbers of DescriptorProto: field 2, nested_type 3, enum_type 4, oneof_decl 8.
    found = [(path, name)]
    found += [((*path, 2, i), f"{name}.{f.name}") for i, f in enumerate(m.field)]
    found += [((*path, 8, i), f"{name}.{o.name}") for i, o in enumerate(m.oneof_decl) if not o.name.startswith("_")]
    for i, nested in enumerate(m.nested_type):
        found += _message(nested, (*path, 3, i), f"{name}.{nested.name}")
    for i, enum in enumerate(m.enum_type):
        found += _enum(enum, (*path, 4, i), f"{name}.{enum.name}")
    return found


def _enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str) -> list[tuple[tuple[int, ...], str]]:
    return [(path, name)] + [((*path, 2, i), f"{name}.{v.name}") for i, v in enumerate(e.value)]


def documented_elements(fd: descriptor_pb2.FileDescriptorProto) -> list[tuple[tuple[int, ...], str]]:
    """(source-info path, name) of everything that needs a comment; paths per descriptor.proto
    (FileDescriptorProto: message_type 4, enum_type 5, service 6; ServiceDescriptorProto: method 2)."""
    found: list[tuple[tuple[int, ...], str]] = []
    for i, m in enumerate(fd.message_type):
        found += _message(m, (4, i), m.name)
    for i, e in enumerate(fd.enum_type):
        found += _enum(e, (5, i), e.name)
    for i, s in enumerate(fd.service):
        found.append(((6, i), s.name))
        found += [((6, i, 2, j), f"{s.name}.{r.name}") for j, r in enumerate(s.method)]
    return found


def test_every_element_has_a_leading_comment(tmp_path: Path) -> None:
    undocumented = []
    counted = 0
    for fd in descriptors(tmp_path).file:
        comments = {tuple(loc.path): loc.leading_comments.strip() for loc in fd.source_code_info.location}
        for path, name in documented_elements(fd):
            counted += 1
            if not comments.get(path):
                undocumented.append(f"{fd.name}: {name}")
    assert counted > 500  # every file, with its services (walking nothing would pass vacuously)
    assert not undocumented, "no leading comment:\n" + "\n".join(undocumented)


@pytest.mark.parametrize("kind", ["service", "rpc", "message", "field"])
def test_the_check_finds_a_missing_comment(tmp_path: Path, kind: str) -> None:
    """The walker sees each kind of element: an undocumented one of each is reported."""
    service = "\n// S.\nservice S {\n  // R.\n  rpc R(M) returns (M);\n}\n"
    message = "// M.\nmessage M {\n  // F.\n  string f = 1;\n}\n"
    source = {
        "service": message + service.replace("// S.\n", ""),
        "rpc": message + service.replace("  // R.\n", ""),
        "message": message.replace("// M.\n", "") + service,
        "field": message.replace("  // F.\n", "").replace("= 1;", "= 1;  // trailing only") + service,
    }[kind]
    (tmp_path / "t.proto").write_text('syntax = "proto3";\npackage t;\n' + source)
    out = tmp_path / "t.pb"
    assert (
        protoc.main(["protoc", f"-I{tmp_path}", f"--descriptor_set_out={out}", "--include_source_info", "t.proto"]) == 0
    )
    (fd,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    comments = {tuple(loc.path): loc.leading_comments.strip() for loc in fd.source_code_info.location}
    missing = [name for path, name in documented_elements(fd) if not comments.get(path)]
    assert missing == [{"service": "S", "rpc": "S.R", "message": "M", "field": "M.f"}[kind]]


def test_generated_modules_compile_without_warnings() -> None:
    """RPC comments become docstrings of the generated Python: a backslash there (\\Seen) is an
    invalid escape sequence, a SyntaxWarning today and an error under -W error."""
    for path in sorted((PROTO / "mailstack" / "v1").glob("*_pb2*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(), str(path), "exec")
