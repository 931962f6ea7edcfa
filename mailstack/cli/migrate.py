"""`mailstack migrate metadata --from sqlite:///PATH --to postgresql://...`: an embedded installation's
metadata moved to PostgreSQL, every row as it is (ADR 0035).

The two schemas have the same tables and columns (storage/metadata/postgresql_schema.py), so each
SQLite table is copied verbatim, ids included: account and mailbox ids, UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ, UIDs, MODSEQs, flags, dates, blob keys, password hashes, tokens, the queue. What has
no table of its own in PostgreSQL: SQLite's AUTOINCREMENT high-water marks (sqlite_sequence) become
the identity sequences' positions, and the UIDVALIDITY counter the sequence's, so no id and no
UIDVALIDITY is ever handed out twice. A SQLite table the PostgreSQL schema does not know stops the
run (nothing is left behind silently).

The copy runs in one PostgreSQL transaction against one SQLite read snapshot, and is verified inside
that transaction, per table, by row count and an order-independent checksum of every row; a mismatch
rolls it all back. A target with any row in it is refused. Stop the mailstore first: what it writes
after the snapshot would not be moved.

Bodies kept in the SQLite file (ADR 0045; PostgreSQL keeps none) are written to the blob store first,
each read back, before any row is copied: blob first, metadata second, as at delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mailstack.services.common.config import Settings
from mailstack.storage import registry
from mailstack.storage.blob.base import BlobStore
from mailstack.storage.metadata.postgresql_schema import apply_migrations
from mailstack.storage.metadata.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS

from .output import EXIT_ERROR, EXIT_OK, format_table

BATCH = 1000  # rows per COPY: memory stays bounded whatever the size of the installation
# SQLite tables that are no PostgreSQL table: they become sequence positions (see the module doc).
SEQUENCE_TABLES = frozenset({"sqlite_sequence", "counters"})
KNOWN_COUNTERS = frozenset({"uidvalidity"})
# NOT NULL in PostgreSQL, possibly NULL in rows SQLite kept from before the column: what stands in
# (the store reads a message without a save date as saved at its internal date, ADR 0024).
NULL_FILL = {("messages", "save_date"): "internal_date"}
# SQLite columns PostgreSQL has no place for, moved elsewhere first: kept bodies go to the blob store.
SQLITE_ONLY = frozenset({("blobs", "body")})
_CAST: dict[str, Callable[[Any], Any]] = {
    "bigint": int,
    "integer": int,
    "smallint": int,
    "boolean": bool,
    "double precision": float,
    "real": float,
    "bytea": bytes,
    "text": str,
}


class MigrationError(Exception):
    """Why the migration cannot run or did not verify: one line for the operator."""


@dataclass(frozen=True)
class TableReport:
    table: str
    rows: int
    checksum: str  # of the source rows as copied; the target's matched it


def sqlite_path(url: str) -> Path:
    if urlsplit(url).scheme != "sqlite" or not url.split("://", 1)[1]:
        raise MigrationError(f"--from {url!r}: expected sqlite:///PATH")
    path = Path(url.split("://", 1)[1])
    if not path.is_file():
        raise MigrationError(f"--from {url!r}: no such SQLite file")
    return path


def check_target(url: str) -> str:
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise MigrationError(f"--to {url!r}: expected postgresql://USER@HOST/DATABASE")
    return url


def open_source(path: Path) -> sqlite3.Connection:
    """Read-only, in one read transaction (a WAL snapshot) held for the whole copy and check."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version != len(SQLITE_MIGRATIONS):
            raise MigrationError(
                f"{path}: schema version {version}, this program's is {len(SQLITE_MIGRATIONS)}: "
                "start this version's mailstore on it once (it upgrades the schema), then migrate"
            )
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot starts here
    except sqlite3.Error as err:
        conn.close()
        raise MigrationError(f"{path}: {err}") from None
    except MigrationError:
        conn.close()
        raise
    return conn


def source_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    return [str(name) for (name,) in rows]


def row_digest(values: Sequence[Any]) -> int:
    """A row's hash, from a type-tagged text form both databases' values give alike."""
    parts = []
    for value in values:
        if value is None:
            parts.append("n")
        elif isinstance(value, bool | int):
            parts.append(f"i{int(value)}")
        elif isinstance(value, float):
            parts.append(f"f{value!r}")
        elif isinstance(value, bytes | memoryview):
            parts.append("b" + bytes(value).hex())
        else:
            parts.append("s" + str(value).replace("\\", "\\\\").replace("|", "\\|"))
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest(), "big")


class Checksum:
    """The sum of the rows' digests modulo 2**256: order-independent, so the two databases may
    return rows in any order (their collations differ)."""

    def __init__(self) -> None:
        self.rows = 0
        self.total = 0

    def add(self, values: Sequence[Any]) -> None:
        self.rows += 1
        self.total = (self.total + row_digest(values)) % (1 << 256)

    @property
    def hexdigest(self) -> str:
        return f"{self.total:064x}"


async def target_columns(conn: Any) -> dict[str, list[tuple[str, str, bool]]]:
    """table -> [(column, data type, nullable)] of the target's public tables, in column order."""
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable = 'YES' AS nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    )
    out: dict[str, list[tuple[str, str, bool]]] = {}
    for row in rows:
        out.setdefault(row["table_name"], []).append((row["column_name"], row["data_type"], row["nullable"]))
    return out


async def copy_order(conn: Any, tables: Sequence[str]) -> list[str]:
    """`tables` with every table after the ones its foreign keys reference."""
    edges = await conn.fetch(
        "SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent FROM pg_constraint"
        " WHERE contype = 'f'"
    )
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for edge in edges:
        if edge["child"] in parents and edge["parent"] != edge["child"]:
            parents[edge["child"]].add(edge["parent"])
    order: list[str] = []
    while len(order) < len(tables):
        ready = sorted(t for t in tables if t not in order and parents[t] <= set(order))
        if not ready:
            raise MigrationError(f"foreign keys form a cycle among {sorted(set(tables) - set(order))}")
        order.extend(ready)
    return order


async def refuse_non_empty(conn: Any, tables: Sequence[str]) -> None:
    for table in tables:
        if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'):
            raise MigrationError(f"the target is not empty (table {table} has rows): migrate into a new database")


def source_rows(
    source: sqlite3.Connection, table: str, columns: Sequence[tuple[str, str, bool]]
) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows in batches, each value cast to its PostgreSQL column's type."""
    names = [name for name, _, _ in columns]
    fills = [names.index(NULL_FILL[(table, name)]) if (table, name) in NULL_FILL else -1 for name in names]
    casts = [_CAST.get(data_type) for _, data_type, _ in columns]
    quoted = ", ".join(f'"{name}"' for name in names)
    cursor = source.execute(f'SELECT {quoted} FROM "{table}"')
    while batch := cursor.fetchmany(BATCH):
        rows = []
        for raw in batch:
            values = [
                raw[fill] if value is None and fill >= 0 else value for value, fill in zip(raw, fills, strict=True)
            ]
            rows.append(
                tuple(v if v is None or cast is None else cast(v) for v, cast in zip(values, casts, strict=True))
            )
        yield rows


async def copy_table(
    source: sqlite3.Connection, target: Any, table: str, columns: Sequence[tuple[str, str, bool]]
) -> TableReport:
    """Copy one table and check the target's rows against what was sent."""
    sent = Checksum()
    for rows in source_rows(source, table, columns):
        for row in rows:
            sent.add(row)
        await target.copy_records_to_table(table, records=rows, columns=[name for name, _, _ in columns])
    got = Checksum()
    quoted = ", ".join(f'"{name}"' for name, _, _ in columns)
    async with target.transaction():  # a cursor needs one; nested: a savepoint of the copy's transaction
        async for record in target.cursor(f'SELECT {quoted} FROM "{table}"', prefetch=BATCH):
            got.add(tuple(record))
    if (got.rows, got.total) != (sent.rows, sent.total):
        raise MigrationError(
            f"table {table}: verification failed ({sent.rows} rows sent, {got.rows} read back, checksums "
            f"{sent.hexdigest[:16]} / {got.hexdigest[:16]}); nothing was committed"
        )
    return TableReport(table, sent.rows, sent.hexdigest)


async def continue_sequences(source: sqlite3.Connection, target: Any) -> None:
    """Identity sequences past every id SQLite ever handed out (AUTOINCREMENT never reuses one), the
    UIDVALIDITY sequence past SQLite's counter and every mailbox's UIDVALIDITY."""
    used = dict(source.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    counters = dict(source.execute("SELECT name, value FROM counters").fetchall())
    unknown = set(counters) - KNOWN_COUNTERS
    if unknown:
        raise MigrationError(f"SQLite counters this program does not know: {sorted(unknown)}")
    identities = await target.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND is_identity = 'YES'"
    )
    for row in identities:
        table, column = row["table_name"], row["column_name"]
        highest = max(
            int(used.get(table, 0)), int(await target.fetchval(f'SELECT COALESCE(MAX("{column}"), 0) FROM "{table}"'))
        )
        if highest:
            await target.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), $1)", highest)
    floor = max(
        int(counters.get("uidvalidity", 0)),
        int(await target.fetchval("SELECT COALESCE(MAX(uidvalidity), 0) FROM mailboxes")),
    )
    await target.execute(
        "SELECT setval('uidvalidity_seq', GREATEST((SELECT last_value FROM uidvalidity_seq), $1::bigint))", floor
    )


def kept_bodies(source: sqlite3.Connection) -> int:
    """How many bodies the SQLite file keeps itself (ADR 0045; open_source checked the schema)."""
    return int(source.execute("SELECT count(*) FROM blobs WHERE body IS NOT NULL").fetchone()[0])


async def export_kept_bodies(source: sqlite3.Connection, blobs: BlobStore) -> int:
    """Write every kept body to the blob store under its key and read it back; the count."""
    cursor = source.execute("SELECT key, body FROM blobs WHERE body IS NOT NULL ORDER BY key")
    moved = 0
    while batch := cursor.fetchmany(100):  # at most 100 bodies of <= 1 MiB in memory
        for key, body in batch:
            await blobs.put(key, body)
            if await blobs.get(key) != body:
                raise MigrationError(f"body {key}: the blob store gave back other bytes; nothing was committed")
            moved += 1
    return moved


async def migrate_metadata(source_url: str, target_url: str, blobs: BlobStore | None = None) -> list[TableReport]:
    """Copy every table, verify, commit; MigrationError (nothing committed) when it cannot. `blobs`
    receives the bodies the SQLite file keeps; without it, a file that keeps any is refused."""
    import asyncpg  # here: only this command needs the driver loaded

    path = sqlite_path(source_url)
    check_target(target_url)
    source = open_source(path)
    try:
        if count := kept_bodies(source):
            if blobs is None:
                raise MigrationError(
                    f"{count} bodies are kept in the SQLite file: a blob store to move them to is needed"
                )
            await export_kept_bodies(source, blobs)
        try:
            target = await asyncpg.connect(target_url)
        except (OSError, asyncpg.PostgresError) as err:
            raise MigrationError(f"--to: cannot connect: {err}") from None
        try:
            await apply_migrations(target)  # an empty database gets the schema; a current one is kept
            return await _copy_all(source, target)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error, ValueError, TypeError) as err:
            # A value the target refuses or cannot take (a damaged source row): one line, nothing kept.
            raise MigrationError(f"copy failed, nothing was committed: {type(err).__name__}: {err}") from None
        finally:
            await target.close()
    finally:
        source.close()


async def _copy_all(source: sqlite3.Connection, target: Any) -> list[TableReport]:
    columns = await target_columns(target)
    columns.pop("schema_version", None)
    tables = [t for t in source_tables(source) if t not in SEQUENCE_TABLES]
    unknown = [t for t in tables if t not in columns]
    if unknown:
        raise MigrationError(f"SQLite tables the PostgreSQL schema has no place for: {', '.join(unknown)}")
    await refuse_non_empty(target, sorted(columns))
    reports = []
    async with target.transaction():
        for table in await copy_order(target, tables):
            source_names = {r[1] for r in source.execute(f'PRAGMA table_info("{table}")')}
            source_names -= {name for owner, name in SQLITE_ONLY if owner == table}
            missing = [name for name, _, _ in columns[table] if name not in source_names]
            extra = sorted(source_names - {name for name, _, _ in columns[table]})
            if missing or extra:
                raise MigrationError(
                    f"table {table}: columns differ (only in PostgreSQL: {missing}, only in SQLite: {extra})"
                )
            reports.append(await copy_table(source, target, table, columns[table]))
        await continue_sequences(source, target)
    return reports


def cmd_migrate_metadata(settings: Settings, args: argparse.Namespace) -> int:
    """Run the migration; print a line per table (rows, checksum). Exit 1 with one line on failure."""
    try:
        reports, moved = asyncio.run(_migrate_with_bodies(settings, args))
    except MigrationError as err:
        print(f"mailstack: migrate: {err}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        import json

        print(json.dumps([{"table": r.table, "rows": r.rows, "checksum": r.checksum} for r in reports]))
    else:
        print(format_table(["TABLE", "ROWS", "CHECKSUM"], [[r.table, r.rows, r.checksum[:16]] for r in reports]))
        print(f"migrated and verified {len(reports)} tables, {sum(r.rows for r in reports)} rows")
        if moved:
            print(f"{moved} bodies kept in the SQLite file written to {args.blob_url or settings.effective_blob_url}")
    return EXIT_OK


async def _migrate_with_bodies(settings: Settings, args: argparse.Namespace) -> tuple[list[TableReport], int]:
    """The migration with the installation's blob store (or --blob-url) for the kept bodies."""
    source = open_source(sqlite_path(args.source))
    try:
        moved = kept_bodies(source)
    finally:
        source.close()
    blobs = registry.open_blob_store(
        args.blob_url or settings.effective_blob_url,
        s3_endpoint=settings.s3_endpoint,
        s3_region=settings.s3_region,
        s3_path_style=settings.s3_path_style,
        s3_client=settings.s3_client,
    )
    try:
        return await migrate_metadata(args.source, args.target, blobs), moved
    finally:
        await blobs.close()
