"""The import map, checked: which layers may import which (issue 14 §5, ARCHITECTURE.md).

Every module under the mailstack packages is parsed (not imported) and each of its imports, at any
depth (lazy imports in functions and TYPE_CHECKING blocks count too: both are dependencies), is held
against the RULES table. All violations are reported at once, so a merge shows its whole debt."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVICES = ("smtp", "imap", "pop3", "outbound", "mailstore")
FRONTENDS = ("smtp", "pop3", "outbound")  # and imap, with its own rule


@dataclass(frozen=True)
class Rule:
    why: str
    sources: tuple[str, ...]  # modules (and everything below them) the rule applies to
    forbidden: tuple[str, ...]  # modules (and everything below them) they may not import
    allowed: tuple[str, ...] = ()  # within forbidden, yet allowed: the rule's stated exception


def _services(*names: str) -> tuple[str, ...]:
    return tuple(f"mailstack.services.{name}" for name in names)


# Storage backends: one module per implementation. base.py (the interface), registry.py (which picks
# an implementation by URL) and the helpers every backend of a kind shares (blob/keys.py,
# events/queue.py, metadata/rules.py, metadata/uidranges.py) are not backends; helpers private to one
# backend (metadata/sqlite_schema.py, metadata/postgresql_schema.py) belong to it.
BACKENDS = (
    "mailstack.storage.blob.file",
    "mailstack.storage.blob.memory",
    "mailstack.storage.blob.s3",
    "mailstack.storage.blob.s3lean",
    "mailstack.storage.blob.cache",
    "mailstack.storage.blob.kept",  # in front of any blob store: bodies the metadata database keeps (ADR 0045)
    "mailstack.storage.events.memory",
    "mailstack.storage.events.redis",
    "mailstack.storage.metadata.sqlite",
    "mailstack.storage.metadata.postgresql",
    "mailstack.storage.queue.sqlite",
    "mailstack.storage.queue.postgresql",
    "mailstack.storage.quota.redis",
    "mailstack.storage.quota.sql",
    "mailstack.storage.sessions.memory",
    "mailstack.storage.sessions.redis",
    "mailstack.storage.events.siblings",
    "mailstack.storage.sessions.files",
)

# Every other storage module, so that a new backend cannot go unclassified (see the test below).
NOT_BACKENDS = (
    "mailstack.storage.errors",
    "mailstack.storage.private_paths",
    "mailstack.storage.registry",
    "mailstack.storage.blob.keys",
    "mailstack.storage.events.queue",
    "mailstack.storage.metadata.sqlite_schema",  # the sqlite backend's own
    "mailstack.storage.metadata.sqlite_writers",  # the sqlite backend's own: writers of several processes take turns
    "mailstack.storage.metadata.postgresql_schema",  # the postgresql backend's own
    "mailstack.storage.metadata.uidranges",  # UID-set arithmetic both SQL backends use
    "mailstack.storage.metadata.rules",  # INBOX, stored flags, STORE modes: every metadata backend's
    "mailstack.storage.blob.sigv4",  # the lean S3 store's own: request signing (ADR 0042)
    "mailstack.storage.blob.s3http",  # the lean S3 store's own: its HTTP client (ADR 0042)
)

# Two modules that are one backend, each pair with its reason. Code both use goes to a shared module
# beside base.py instead (blob/keys.py, events/queue.py).
SIBLINGS = {
    # The queue's tables live in the metadata database; its transactions run through the metadata store's
    # writer thread, sharing group commit and the `blobs` table the orphan sweeper reads (queue/sqlite.py).
    ("mailstack.storage.queue.sqlite", "mailstack.storage.metadata.sqlite"),
    # The same on PostgreSQL: one pool, one transaction discipline, one `blobs` table (queue/postgresql.py).
    ("mailstack.storage.queue.postgresql", "mailstack.storage.metadata.postgresql"),
    # The lean S3 store is the boto3 one with its hot path on our own client: boto3 still resolves its
    # endpoint and credentials and lists the bucket, and stays the fallback (ADR 0042).
    ("mailstack.storage.blob.s3lean", "mailstack.storage.blob.s3"),
    # The workers' bus is the in-process bus of each worker plus datagrams between them (ADR 0043).
    ("mailstack.storage.events.siblings", "mailstack.storage.events.memory"),
}

RULES: tuple[Rule, ...] = (
    Rule("frontends reach data only through the mailstore API", _services(*FRONTENDS), ("mailstack.storage",)),
    Rule(
        # ARCHITECTURE.md: "the one exception is that imap may subscribe to the event bus" (ADR 0015)
        "IMAP may subscribe to the event bus, and touch no other storage",
        _services("imap"),
        ("mailstack.storage",),
        allowed=("mailstack.storage.events", "mailstack.storage.registry.open_event_bus"),
    ),
    Rule(
        "common code and the message library serve every service, so they import none",
        ("mailstack.services.common", "mailstack.message"),
        _services(*SERVICES),
    ),
    Rule(
        "protocol layers are pure: wire grammar, no API module",
        ("mailstack.services.imap.protocol", "mailstack.services.pop3.protocol"),
        ("mailstack.v1",),
    ),
    Rule("storage knows no service", ("mailstack.storage",), ("mailstack.services",)),
    Rule(
        # ENVELOPE and BODYSTRUCTURE are stored as message.proto's types, which are not the API (ADR 0013)
        "the stored format and the message library are not the API's wire types (issue 14 §1)",
        ("mailstack.storage", "mailstack.message"),
        ("mailstack.v1",),
        allowed=("mailstack.v1.message_pb2",),
    ),
    Rule(
        # issue 14 §2: protobuf only in the translation layer; a stored structure is message.proto's
        # (ADR 0013), and a SEARCH key is evaluated as the API sends it
        "the mailstore core uses no API wire type but SearchKey",
        ("mailstack.services.mailstore.core",),
        ("mailstack.v1",),
        allowed=("mailstack.v1.message_pb2", "mailstack.v1.mailstore_pb2.SearchKey"),
    ),
    *(
        Rule(
            "a storage backend stands alone",
            (backend,),
            tuple(other for other in BACKENDS if other != backend and (backend, other) not in SIBLINGS),
        )
        for backend in BACKENDS
    ),
)


def _within(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def package_roots() -> dict[str, Path]:
    """Each mailstack package's folder (the folders do not match the import names, see
    pyproject's package-dir). A package missing is an error, never a smaller check."""
    roots = {}
    for name in ("mailstack", "mailstack.services", "mailstack.storage", "mailstack.message", "mailstack.cli"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"package {name} not found"
        roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def modules(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Module name -> file; a file reachable from two roots takes the most specific name."""
    by_file: dict[Path, str] = {}
    for root_name, folder in sorted(roots.items(), key=lambda item: len(item[0])):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            by_file[path.resolve()] = ".".join((root_name, *parts))
    return {name: path for path, name in by_file.items()}


def imported_names(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, name) for each import; `from a import b` yields a.b (b may be a module or a name in a)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def violations(roots: Mapping[str, Path], rules: Sequence[Rule] = RULES) -> list[str]:
    found = []
    for module, path in sorted(modules(roots).items()):
        for rule in rules:
            if not _within(module, rule.sources):
                continue
            seen = set()
            for line, name in imported_names(module, path):
                wrong = _within(name, rule.forbidden) and not _within(name, rule.allowed)
                if wrong and not _within(name, (module,)) and (line, rule.why) not in seen:
                    seen.add((line, rule.why))
                    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
                    found.append(f"{shown}:{line}: {module} imports {name} ({rule.why})")
    return found


def test_every_import_follows_the_map() -> None:
    found = violations(package_roots())
    assert not found, f"{len(found)} wrong-way imports:\n" + "\n".join(found)


def test_the_map_covers_the_packages() -> None:
    # a rule whose sources match no module checks nothing: catch a renamed folder
    names = modules(package_roots())
    for rule in RULES:
        for source in rule.sources:
            if source != "mailstack.message":  # arrives with the message library
                assert any(_within(name, (source,)) for name in names), f"{source} matches no module"


def test_every_storage_module_is_a_backend_or_named_as_shared() -> None:
    roots = package_roots()
    packages = {name for name, path in modules(roots).items() if path.name == "__init__.py"}
    for name in modules(roots):
        if _within(name, ("mailstack.storage",)) and name not in packages and not name.endswith(".base"):
            assert name in BACKENDS or name in NOT_BACKENDS, f"{name}: a backend (BACKENDS) or shared (NOT_BACKENDS)?"


# ---------------------------------------------------------------- the checker itself


def _plant(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"smtp/__init__.py": "", "smtp/x.py": "from mailstack.storage.blob import file\n"}, ["mailstack.storage"]),
        ({"smtp/__init__.py": "", "smtp/x.py": "def f():\n    import mailstack.storage.errors\n"}, ["storage"]),
        ({"common/__init__.py": "", "common/x.py": "from mailstack.services.imap import session\n"}, ["imap"]),
        ({"common/__init__.py": "", "common/x.py": "from ..pop3 import session\n"}, ["pop3"]),  # relative
        ({"imap/protocol/__init__.py": "", "imap/protocol/x.py": "from mailstack.v1 import x\n"}, ["v1"]),
        ({"imap/__init__.py": "", "imap/x.py": "from mailstack.services.common import tls\n"}, []),  # allowed
        ({"imap/__init__.py": "", "imap/x.py": "from mailstack.storage.events.base import ChangeEvent\n"}, []),
        ({"imap/__init__.py": "", "imap/x.py": "from mailstack.storage.registry import open_blob_store\n"}, ["blob"]),
        ({"mailstore/core/x.py": "from mailstack.v1 import mailstore_pb2 as pb\n"}, ["core"]),
        ({"mailstore/core/x.py": "from mailstack.v1.mailstore_pb2 import SearchKey\n"}, []),  # allowed
    ],
)
def test_checker_catches_a_planted_wrong_way_import(
    tmp_path: Path, files: Mapping[str, str], expected: list[str]
) -> None:
    _plant(tmp_path / "services", files)
    found = violations({"mailstack.services": tmp_path / "services"})
    assert len(found) == len(expected), found
    for message, fragment in zip(found, expected, strict=True):
        assert fragment in message and "x.py" in message


def test_checker_keeps_storage_backends_apart(tmp_path: Path) -> None:
    _plant(
        tmp_path / "storage",
        {
            "blob/__init__.py": "",
            "blob/base.py": "",
            "blob/file.py": "from mailstack.storage.blob.base import BlobStore\n",  # the interface: allowed
            "blob/memory.py": "from .file import clamp_range\n",  # another backend: not
            "blob/s3.py": "import mailstack.services.mailstore.core\n",  # a service: not
        },
    )
    found = violations({"mailstack.storage": tmp_path / "storage"})
    assert [message.split(": ", 1)[1] for message in found] == [
        "mailstack.storage.blob.memory imports mailstack.storage.blob.file.clamp_range"
        " (a storage backend stands alone)",
        "mailstack.storage.blob.s3 imports mailstack.services.mailstore.core (storage knows no service)",
    ]
