"""SQLite metadata store: one writer thread, a small pool of reader threads, WAL.

Every Protocol method is one transaction: writes run as BEGIN IMMEDIATE ... COMMIT on the
single writer connection, reads as a (snapshot) read transaction on a reader connection.
Group commit: the writer thread takes every write waiting in its queue (up to
GROUP_COMMIT_MAX) into one transaction, each write in its own SAVEPOINT so that one
failing write is rolled back alone, and answers each caller only after the shared
COMMIT (synchronous=FULL: fsynced). Under load this turns N fsyncs into one.
Nothing is cached in the process: UIDs, MODSEQs and UIDVALIDITYs are allocated from rows
inside the transaction that uses them, so the same SQL works with several writers
(another process on this file, or PostgreSQL replicas later).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from mailstack.message.flags import canonical_flags
from mailstack.storage.errors import (
    AccountNotFound,
    AlreadyExists,
    MailboxNotFound,
    NotAllowed,
    OverQuota,
    StorageError,
    StorageUnavailable,
)
from mailstack.storage.metadata import uidranges
from mailstack.storage.metadata.base import (
    LIVE_FORWARD,
    AccountRecord,
    BodyReference,
    ChangeRecord,
    CopyResult,
    DeliveryTarget,
    ExpungeResult,
    FlagUpdate,
    ForwardRecord,
    InsertResult,
    MailboxCounts,
    MailboxRecord,
    MessageRecord,
    MetadataStore,
    NewMessage,
    StoreMode,
    UidRanges,
)
from mailstack.storage.metadata.rules import INBOX, UIDVALIDITY_MAX, check_adoption, check_kept_uid
from mailstack.storage.metadata.rules import apply_mode as _apply_mode
from mailstack.storage.metadata.rules import flags_text as _flags_text
from mailstack.storage.metadata.rules import flags_tuple as _flags_tuple
from mailstack.storage.metadata.rules import mailbox_name as _mailbox_name
from mailstack.storage.metadata.sqlite_schema import apply_migrations
from mailstack.storage.metadata.sqlite_writers import WritersLock
from mailstack.storage.private_paths import private_dir, private_sqlite

T = TypeVar("T")

GROUP_COMMIT_MAX = 64  # writes per shared transaction; bounds one COMMIT's latency

# sqlite3.OperationalError texts that mean "the database is not usable right now".
_UNAVAILABLE_TEXTS = ("locked", "busy", "disk i/o", "unable to open", "disk is full", "readonly", "interrupted")

_ACCOUNT_COLUMNS = "id, name, password_hash, quota_bytes, quota_messages, used_bytes, used_messages"
_MAILBOX_COLUMNS = (
    "m.id, m.account_id, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, m.special_use,"
    " EXISTS (SELECT 1 FROM subscriptions s WHERE s.account_id = m.account_id AND s.name = m.name)"
)
# Flags are stored as one space-joined string of sorted names; these test membership in SQL.
_HAS_SEEN = "instr(' ' || flags || ' ', ' \\Seen ') > 0"
_HAS_DELETED = "instr(' ' || flags || ' ', ' \\Deleted ') > 0"


def _unavailable(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return any(t in text for t in _UNAVAILABLE_TEXTS)


@dataclass(frozen=True, slots=True)
class _Mailbox:
    id: int
    account_id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    recent_floor: int


@dataclass(frozen=True, slots=True)
class _WriteJob:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    in_transaction: bool  # False only for migrate, which runs its own transactions


def _call(fn: Callable[[sqlite3.Connection], Any], conn: sqlite3.Connection) -> tuple[bool, Any]:
    try:
        return True, fn(conn)
    except Exception as exc:
        return False, exc


def _resolve_futures(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in answers:
        if future.done():  # the caller was cancelled; the write is committed (or not) regardless
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


# ------------------------------------------------------------------ SQL helpers (run on a DB thread)


def _changes_since(
    conn: sqlite3.Connection, mailbox_id: int, modseq: int, limit: int | None
) -> list[ChangeRecord] | None:
    """Flag changes, new messages and expunges after `modseq`, by MODSEQ; None when a kind has
    `limit` rows or more (the caller reads again without a limit)."""
    _mailbox(conn, mailbox_id)
    bound = "" if limit is None else f" LIMIT {limit}"
    rows = _rows(
        conn,
        "SELECT uid, modseq, created_modseq, flags FROM messages WHERE mailbox_id = ? AND modseq > ?" + bound,
        (mailbox_id, modseq),
    )
    expunged = _rows(
        conn,
        "SELECT uid, modseq FROM changes WHERE mailbox_id = ? AND modseq > ? AND kind = 'expunge'" + bound,
        (mailbox_id, modseq),
    )
    if limit is not None and max(len(rows), len(expunged)) >= limit:
        return None
    changes = [
        ChangeRecord(uid, m, "new" if created > modseq else "flags", _flags_tuple(text))
        for uid, m, created, text in rows
    ]
    changes += [ChangeRecord(uid, m, "expunge", ()) for uid, m in expunged]
    changes.sort(key=lambda c: (c.modseq, c.uid))
    return changes


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    # Always drain the cursor: an unfinished RETURNING statement would block COMMIT.
    return conn.execute(sql, params).fetchall()


def _one(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    rows = _rows(conn, sql, params)
    return rows[0] if rows else None


def _account_by_name(conn: sqlite3.Connection, name: str) -> AccountRecord | None:
    row = _one(conn, f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = ?", (name,))
    return AccountRecord(*row) if row else None


def _resolve_address(conn: sqlite3.Connection, address: str) -> AccountRecord | None:
    """An account by its own name, then an alias, then the domain's catch-all."""
    account = _account_by_name(conn, address)
    if account is not None:
        return account
    candidates = [address]
    if "@" in address:
        candidates.append("@" + address.rsplit("@", 1)[1])
    for candidate in candidates:
        row = _one(
            conn,
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = (SELECT account_id FROM aliases WHERE address = ?)",
            (candidate,),
        )
        if row:
            return AccountRecord(*row)
    return None


def _account_id(conn: sqlite3.Connection, name: str) -> int:
    row = _one(conn, "SELECT id FROM accounts WHERE name = ?", (name,))
    if row is None:
        raise AccountNotFound(name)
    return int(row[0])


def _require_account_id(conn: sqlite3.Connection, account_id: int) -> None:
    if _one(conn, "SELECT 1 FROM accounts WHERE id = ?", (account_id,)) is None:
        raise AccountNotFound(str(account_id))


def _mailbox_from_row(row: Any) -> MailboxRecord:
    mailbox_id, account_id, name, uidvalidity, uidnext, highestmodseq, special_use, subscribed = row
    return MailboxRecord(
        mailbox_id, account_id, name, uidvalidity, uidnext, highestmodseq, special_use, bool(subscribed)
    )


def _mailbox_record(conn: sqlite3.Connection, account_id: int, name: str) -> MailboxRecord | None:
    row = _one(
        conn, f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.account_id = ? AND m.name = ?", (account_id, name)
    )
    return _mailbox_from_row(row) if row else None


def _mailbox(conn: sqlite3.Connection, mailbox_id: int) -> _Mailbox:
    row = _one(
        conn,
        "SELECT id, account_id, uidvalidity, uidnext, highestmodseq, recent_floor FROM mailboxes WHERE id = ?",
        (mailbox_id,),
    )
    if row is None:
        raise MailboxNotFound(str(mailbox_id))
    return _Mailbox(*row)


def _next_uidvalidity(conn: sqlite3.Connection) -> int:
    # Seeded from the clock, then strictly increasing (global, so never reused in any account).
    row = _one(
        conn,
        "UPDATE counters SET value = MAX(value + 1, ?) WHERE name = 'uidvalidity' RETURNING value",
        (int(time.time()),),
    )
    value = int(row[0])
    if value > UIDVALIDITY_MAX:
        raise StorageError("UIDVALIDITY counter exhausted 32 bits")
    return value


def _insert_mailbox(conn: sqlite3.Connection, account_id: int, name: str, special_use: str) -> int:
    row = _one(
        conn,
        "INSERT INTO mailboxes (account_id, name, uidvalidity, special_use) VALUES (?, ?, ?, ?) RETURNING id",
        (account_id, name, _next_uidvalidity(conn), special_use),
    )
    return int(row[0])


def _allocate(conn: sqlite3.Connection, mailbox_id: int, count: int) -> tuple[int, int]:
    """Reserve count UIDs and one new MODSEQ in the mailbox: (first uid, modseq)."""
    row = _one(
        conn,
        "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1 WHERE id = ?"
        " RETURNING uidnext, highestmodseq",
        (count, mailbox_id),
    )
    if row is None:
        raise MailboxNotFound(str(mailbox_id))
    return int(row[0]) - count, int(row[1])


def _allocate_one(conn: sqlite3.Connection, mailbox: _Mailbox, wanted: int) -> tuple[int, int]:
    """The next UID, or the wanted one (kept from another server), and a new MODSEQ."""
    if not wanted:
        return _allocate(conn, mailbox.id, 1)
    check_kept_uid(wanted, mailbox.uidnext)
    row = _one(
        conn,
        "UPDATE mailboxes SET uidnext = ? + 1, highestmodseq = highestmodseq + 1 WHERE id = ? RETURNING highestmodseq",
        (wanted, mailbox.id),
    )
    return wanted, int(row[0])


def _bump_modseq(conn: sqlite3.Connection, mailbox_id: int) -> int:
    row = _one(
        conn,
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ? RETURNING highestmodseq",
        (mailbox_id,),
    )
    return int(row[0])


def _check_quota(conn: sqlite3.Connection, account_id: int, add_bytes: int, add_messages: int) -> None:
    quota_bytes, quota_messages, used_bytes, used_messages = _one(
        conn, "SELECT quota_bytes, quota_messages, used_bytes, used_messages FROM accounts WHERE id = ?", (account_id,)
    )
    if (quota_bytes and used_bytes + add_bytes > quota_bytes) or (
        quota_messages and used_messages + add_messages > quota_messages
    ):
        raise OverQuota(f"account {account_id}: +{add_bytes} bytes, +{add_messages} messages")


def _add_usage(conn: sqlite3.Connection, account_id: int, add_bytes: int, add_messages: int) -> None:
    conn.execute(
        "UPDATE accounts SET used_bytes = MAX(used_bytes + ?, 0), used_messages = MAX(used_messages + ?, 0)"
        " WHERE id = ?",
        (add_bytes, add_messages, account_id),
    )


def _reference_blobs(conn: sqlite3.Connection, keys: Iterable[str], body: bytes | None = None) -> None:
    """One more reference per key occurrence; `body` (one key only) is stored with a new key."""
    for key, count in Counter(keys).items():
        conn.execute(
            "INSERT INTO blobs (key, refcount, body) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET refcount = refcount + ?",
            (key, count, body, count),
        )


def _release_blobs(conn: sqlite3.Connection, keys: Iterable[str]) -> list[str]:
    """Drop one reference per key occurrence; delete and return the keys nobody references any more."""
    freed: list[str] = []
    for key, count in sorted(Counter(keys).items()):
        row = _one(conn, "UPDATE blobs SET refcount = refcount - ? WHERE key = ? RETURNING refcount", (count, key))
        if row is None or row[0] <= 0:
            conn.execute("DELETE FROM blobs WHERE key = ?", (key,))
            freed.append(key)
    return freed


def _select_uids(
    conn: sqlite3.Connection,
    mailbox_id: int,
    uids: UidRanges | None,
    columns: str,
    extra: str = "",
    extra_params: Sequence[Any] = (),
) -> list[Any]:
    """Rows of the mailbox's messages in uids (None = all) and the `extra` condition, in UID order;
    column 0 must be uid."""
    sql = f"SELECT {columns} FROM messages WHERE mailbox_id = ?"
    params: list[Any] = [mailbox_id]
    merged: list[tuple[int, int]] | None = None
    if uids is not None:
        max_uid = _one(conn, "SELECT COALESCE(MAX(uid), 0) FROM messages WHERE mailbox_id = ?", (mailbox_id,))[0]
        merged = uidranges.normalise(uids, max_uid)
        condition, range_params, exact = uidranges.sql_condition(merged)
        sql += f" AND {condition}"
        params += range_params
        if exact:
            merged = None
    rows = _rows(conn, f"{sql} {extra} ORDER BY uid", [*params, *extra_params])
    if merged is not None:
        rows = [r for r in rows if uidranges.contains(merged, r[0])]
    return rows


def _remove_messages(conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int], modseq: int) -> None:
    """Delete rows and log their expunge at modseq (RFC 7162 §3.2.5: VANISHED needs the log)."""
    conn.executemany("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", [(mailbox_id, u) for u in uids])
    now = time.time()  # the log is pruned by age (prune_changes)
    conn.executemany(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind, at) VALUES (?, ?, ?, 'expunge', ?)",
        [(mailbox_id, modseq, u, now) for u in uids],
    )


def _copy_rows(
    conn: sqlite3.Connection, source_id: int, source_uids: Sequence[int], destination_id: int
) -> tuple[list[tuple[int, int]], int]:
    """Copy rows (ascending source UID order) to new UIDs in destination; returns (mapping, modseq)."""
    first, modseq = _allocate(conn, destination_id, len(source_uids))
    now = int(time.time())  # RFC 8514: a copy (or move) is saved now
    mapping = [(uid, first + i) for i, uid in enumerate(source_uids)]
    conn.executemany(
        "INSERT INTO messages (mailbox_id, uid, modseq, created_modseq, flags, internal_date, tz_offset, size,"
        " blob_key, envelope, structure, header, sent_date, save_date)"
        " SELECT ?, ?, ?, ?, flags, internal_date, tz_offset, size, blob_key, envelope, structure, header, sent_date, ?"
        " FROM messages WHERE mailbox_id = ? AND uid = ?",
        [(destination_id, new, modseq, modseq, now, source_id, old) for old, new in mapping],
    )
    return mapping, modseq


def _insert_message(
    conn: sqlite3.Connection, mailbox_id: int, message: NewMessage, enforce_quota: bool
) -> InsertResult:
    mailbox = _mailbox(conn, mailbox_id)
    if enforce_quota:
        _check_quota(conn, mailbox.account_id, message.size, 1)
    uid, modseq = _allocate_one(conn, mailbox, message.uid)
    conn.execute(
        "INSERT INTO messages (mailbox_id, uid, modseq, created_modseq, flags, internal_date, tz_offset, size,"
        " blob_key, envelope, structure, header, sent_date, save_date, pop3_uidl)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            mailbox_id,
            uid,
            modseq,
            modseq,
            _flags_text(canonical_flags(message.flags)),
            message.internal_date,
            message.tz_offset,
            message.size,
            message.blob_key,
            message.envelope,
            message.structure,
            message.header,
            message.sent_date,
            int(time.time()),  # RFC 8514 save date
            message.pop3_uidl,
        ),
    )
    _reference_blobs(conn, [message.blob_key], message.body)
    _add_usage(conn, mailbox.account_id, message.size, 1)
    return InsertResult(uid=uid, uidvalidity=mailbox.uidvalidity, modseq=modseq)


def _expunge_all(
    conn: sqlite3.Connection, mailbox: _Mailbox, only_deleted: bool, uids: UidRanges | None
) -> ExpungeResult:
    rows = _select_uids(conn, mailbox.id, uids, "uid, size, blob_key", f"AND {_HAS_DELETED}" if only_deleted else "")
    if not rows:
        return ExpungeResult((), mailbox.highestmodseq, (), 0, 0)
    modseq = _bump_modseq(conn, mailbox.id)
    expunged = [r[0] for r in rows]
    _remove_messages(conn, mailbox.id, expunged, modseq)
    freed = _release_blobs(conn, [r[2] for r in rows])
    freed_bytes = sum(r[1] for r in rows)
    _add_usage(conn, mailbox.account_id, -freed_bytes, -len(rows))
    return ExpungeResult(tuple(expunged), modseq, tuple(freed), freed_bytes, len(rows))


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """An OperationalError that means the database cannot be used becomes StorageUnavailable."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if _unavailable(exc):
            raise StorageUnavailable(str(exc)) from exc
        raise


# Reads of at most this many rows run inline (see SqliteMetadataStore._read).
INLINE_ROWS = 128


def _span(uids: UidRanges) -> int:
    """How many UIDs the ranges can name at most ("*" makes it unbounded)."""
    total = 0
    for first, last in uids:
        if first == 0 or last == 0:
            return 1 << 32
        total += abs(last - first) + 1
    return total


# ------------------------------------------------------------------ the store


class SqliteMetadataStore:
    keeps_bodies = True  # see MetadataStore

    def __init__(self, path: str, *, readers: int = 2, busy_timeout_ms: int = 5000) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        # (job, loop, future, in_transaction); None stops the writer thread.
        self._write_queue: queue.SimpleQueue[_WriteJob | None] = queue.SimpleQueue()
        self._writer_thread: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._writer_stopped = False
        self._reader_pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sqlite-reader")
        self._writer: sqlite3.Connection | None = None  # touched only on the writer thread
        # Other processes' writers on the same file take turns with this one (serve workers).
        self._writers = None if path in ("", ":memory:") else WritersLock(path, busy_timeout_ms / 1000)
        self._reader_local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False

    # ---- connections and transactions (DB threads)

    def _connect(self, *, reader: bool) -> sqlite3.Connection:
        directory = os.path.dirname(self._path)
        if directory and not os.path.isdir(directory):
            private_dir(directory)  # a folder this store creates is its own: 0700
        if self._path not in ("", ":memory:"):
            private_sqlite(self._path)  # 0600 before SQLite creates it (password and token hashes)
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        if not reader:
            conn.execute("PRAGMA journal_mode = WAL")  # readers proceed while the writer commits
        conn.execute("PRAGMA synchronous = FULL")  # durable before acknowledged
        conn.execute("PRAGMA foreign_keys = ON")
        if reader:
            conn.execute("PRAGMA query_only = ON")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._connect(reader=False)
        return self._writer

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = self._connect(reader=True)
            self._reader_local.conn = conn
        return conn

    @staticmethod
    def _transaction(conn: sqlite3.Connection, begin: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute(begin)
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error says more
            raise
        return result

    def _writer_loop(self) -> None:
        """The writer thread: group commit of whatever writes are waiting (see the module docstring)."""
        while True:
            first = self._write_queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < GROUP_COMMIT_MAX:
                try:
                    job = self._write_queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._write_queue.put(None)  # stop after this batch
                    break
                batch.append(job)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_WriteJob]) -> None:
        try:
            conn = self._writer_conn()
        except Exception as exc:
            self._answer(batch, [(False, exc)] * len(batch))
            return
        outcomes: list[tuple[bool, Any]] = []
        group: list[_WriteJob] = []
        for job in batch:
            if job.in_transaction:
                group.append(job)
                continue
            # migrate manages its own transaction: commit what came before it, then run it alone.
            outcomes += self._commit_group(conn, group)
            group = []
            outcomes.append(_call(job.fn, conn))
        outcomes += self._commit_group(conn, group)
        self._answer(batch, outcomes)

    def _commit_group(self, conn: sqlite3.Connection, jobs: list[_WriteJob]) -> list[tuple[bool, Any]]:
        if not jobs:
            return []
        locked = self._writers is not None and self._writers.acquire()
        try:
            return self._commit_jobs(conn, jobs)
        finally:
            if locked:
                assert self._writers is not None
                self._writers.release()

    def _commit_jobs(self, conn: sqlite3.Connection, jobs: list[_WriteJob]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            return [(False, exc)] * len(jobs)
        try:
            for job in jobs:
                conn.execute("SAVEPOINT job")
                ok, value = _call(job.fn, conn)
                if not ok:
                    conn.execute("ROLLBACK TO job")  # this job leaves no trace; the others go on
                conn.execute("RELEASE job")
                outcomes.append((ok, value))
            conn.execute("COMMIT")
        except Exception as exc:
            # The transaction itself failed (disk, I/O): nothing of this group is committed.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error says more
            return [(False, exc)] * len(jobs)
        return outcomes

    @staticmethod
    def _answer(batch: list[_WriteJob], outcomes: list[tuple[bool, Any]]) -> None:
        # One wake-up of each event loop for the whole group, after COMMIT.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_futures, answers)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # A read transaction gives every statement of fn the same snapshot.
        return self._transaction(self._reader_conn(), "BEGIN", fn)

    # ---- off the event loop

    async def _submit(self, pool: ThreadPoolExecutor, job: Callable[[], T]) -> T:
        if self._closed:
            raise StorageUnavailable("metadata store is closed")
        try:
            future = asyncio.get_running_loop().run_in_executor(pool, job)
        except RuntimeError as exc:  # executor shut down under us
            raise StorageUnavailable("metadata store is closed") from exc
        with _mapped_errors():
            return await future

    async def _write(self, fn: Callable[[sqlite3.Connection], T], in_transaction: bool = True) -> T:
        if self._closed:
            raise StorageUnavailable("metadata store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._writer_lock:
            if self._writer_stopped:
                raise StorageUnavailable("metadata store is closed")
            if self._writer_thread is None:
                self._writer_thread = threading.Thread(target=self._writer_loop, name="sqlite-writer", daemon=True)
                self._writer_thread.start()
            self._write_queue.put(_WriteJob(fn, loop, future, in_transaction))
        with _mapped_errors():
            return await future

    async def _read(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T:
        """inline: a point read, run on the calling thread. In WAL mode readers never wait for the
        writer, so it takes tens of microseconds; the thread hop costs more than that and, under
        load, doubles a request's latency (bench/imap_load.py: SELECT and FETCH ~1.6x faster)."""
        if not inline:
            return await self._submit(self._reader_pool, lambda: self._run_read(fn))
        if self._closed:
            raise StorageUnavailable("metadata store is closed")
        with _mapped_errors():
            return self._run_read(fn)

    def _statement(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read of ONE statement, inline: in autocommit mode a statement is its own snapshot, so
        it needs no BEGIN and COMMIT around it (two statements more per call, on every RPC's
        mailbox lookup)."""
        if self._closed:
            raise StorageUnavailable("metadata store is closed")
        with _mapped_errors():
            return fn(self._reader_conn())

    # ---- lifecycle

    async def migrate(self) -> None:
        await self._write(apply_migrations, in_transaction=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        with self._writer_lock:
            thread = self._writer_thread
            self._writer_stopped = True
            self._write_queue.put(None)
        if thread is not None:
            thread.join()
        self._reader_pool.shutdown(wait=True)
        if self._writers is not None:
            self._writers.close()
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._writer = None

    # ---- accounts

    async def create_account(
        self,
        name: str,
        password_hash: str,
        quota_bytes: int,
        quota_messages: int,
        mailboxes: Sequence[tuple[str, str]],
    ) -> AccountRecord:
        name = name.lower()

        def txn(conn: sqlite3.Connection) -> AccountRecord:
            if _one(conn, "SELECT 1 FROM accounts WHERE name = ?", (name,)):
                raise AlreadyExists(name)
            account_id = _one(
                conn,
                "INSERT INTO accounts (name, password_hash, quota_bytes, quota_messages) VALUES (?, ?, ?, ?)"
                " RETURNING id",
                (name, password_hash, quota_bytes, quota_messages),
            )[0]
            wanted: dict[str, str] = {INBOX: ""}  # INBOX always exists
            for mailbox_name, special_use in mailboxes:
                wanted[_mailbox_name(mailbox_name)] = special_use
            for mailbox_name, special_use in wanted.items():
                _insert_mailbox(conn, account_id, mailbox_name, special_use)
            account = _account_by_name(conn, name)
            assert account is not None
            return account

        return await self._write(txn)

    async def get_account(self, name: str) -> AccountRecord | None:
        return await self._read(lambda conn: _account_by_name(conn, name.lower()), inline=True)

    async def list_accounts(self) -> list[AccountRecord]:
        rows = await self._read(lambda conn: _rows(conn, f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name"))
        return [AccountRecord(*r) for r in rows]

    async def set_password(self, name: str, password_hash: str) -> None:
        name = name.lower()

        def txn(conn: sqlite3.Connection) -> None:
            if (
                conn.execute("UPDATE accounts SET password_hash = ? WHERE name = ?", (password_hash, name)).rowcount
                == 0
            ):
                raise AccountNotFound(name)

        await self._write(txn)

    async def set_quota(self, name: str, quota_bytes: int, quota_messages: int) -> AccountRecord:
        name = name.lower()

        def txn(conn: sqlite3.Connection) -> AccountRecord:
            row = _one(
                conn,
                f"UPDATE accounts SET quota_bytes = ?, quota_messages = ? WHERE name = ? RETURNING {_ACCOUNT_COLUMNS}",
                (quota_bytes, quota_messages, name),
            )
            if row is None:
                raise AccountNotFound(name)
            return AccountRecord(*row)

        return await self._write(txn)

    async def delete_account(self, name: str) -> list[str]:
        name = name.lower()

        def txn(conn: sqlite3.Connection) -> list[str]:
            account_id = _account_id(conn, name)
            keys = [
                r[0]
                for r in _rows(
                    conn,
                    "SELECT blob_key FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = ?)",
                    (account_id,),
                )
            ]
            freed = _release_blobs(conn, keys)
            # Cascades to aliases, subscriptions, mailboxes, their messages and change log.
            conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
            return freed

        return await self._write(txn)

    # ---- domains and aliases

    async def add_domain(self, name: str) -> None:
        name = name.lower()

        def txn(conn: sqlite3.Connection) -> None:
            if _one(conn, "SELECT 1 FROM domains WHERE name = ?", (name,)):
                raise AlreadyExists(name)
            conn.execute("INSERT INTO domains (name) VALUES (?)", (name,))

        await self._write(txn)

    async def delete_domain(self, name: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM domains WHERE name = ?", (name.lower(),)))

    async def list_domains(self) -> list[str]:
        rows = await self._read(lambda conn: _rows(conn, "SELECT name FROM domains ORDER BY name"))
        return [r[0] for r in rows]

    async def add_alias(self, address: str, account: str) -> None:
        address, account = address.lower(), account.lower()

        def txn(conn: sqlite3.Connection) -> None:
            account_id = _account_id(conn, account)
            # An alias equal to an account name could never resolve (accounts win), so refuse it.
            if _one(conn, "SELECT 1 FROM aliases WHERE address = ?", (address,)) or _one(
                conn, "SELECT 1 FROM accounts WHERE name = ?", (address,)
            ):
                raise AlreadyExists(address)
            conn.execute("INSERT INTO aliases (address, account_id) VALUES (?, ?)", (address, account_id))

        await self._write(txn)

    async def delete_alias(self, address: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM aliases WHERE address = ?", (address.lower(),)))

    async def list_aliases(self, account: str | None = None) -> list[tuple[str, str]]:
        sql = "SELECT al.address, ac.name FROM aliases al JOIN accounts ac ON ac.id = al.account_id"
        params: tuple[str, ...] = ()
        if account is not None:
            sql += " WHERE ac.name = ?"
            params = (account.lower(),)
        rows = await self._read(lambda conn: _rows(conn, sql + " ORDER BY al.address", params))
        return [(r[0], r[1]) for r in rows]

    async def resolve_address(self, address: str) -> AccountRecord | None:
        return await self._read(lambda conn: _resolve_address(conn, address.lower()), inline=True)

    async def set_forward(self, forward: ForwardRecord) -> None:
        address = forward.address.lower()

        def txn(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM forwards WHERE address = ?", (address,))
            if forward.targets:
                conn.execute(
                    "INSERT INTO forwards (address, targets, keep_copy) VALUES (?, ?, ?)",
                    (address, "\n".join(forward.targets), int(forward.keep_copy)),
                )

        await self._write(txn)

    async def list_forwards(self) -> list[ForwardRecord]:
        sql = "SELECT address, targets, keep_copy FROM forwards ORDER BY address"
        return [_forward(r) for r in await self._read(lambda conn: _rows(conn, sql))]

    async def forwards_for(self, addresses: Sequence[str]) -> dict[str, ForwardRecord]:
        wanted = sorted({a.lower() for a in addresses})
        if not wanted:
            return {}
        # Only of addresses that are still an account or alias: a stale row stays inert.
        sql = f"SELECT address, targets, keep_copy FROM forwards f WHERE address IN ({','.join('?' * len(wanted))})"
        sql += LIVE_FORWARD
        rows = await self._read(lambda conn: _rows(conn, sql, tuple(wanted)), inline=True)
        return {r[0]: _forward(r) for r in rows}

    async def resolve_delivery(self, addresses: Sequence[str], mailbox_name: str) -> list[DeliveryTarget | None]:
        mailbox_name = _mailbox_name(mailbox_name)

        def txn(conn: sqlite3.Connection) -> list[DeliveryTarget | None]:
            out: list[DeliveryTarget | None] = []
            for address in addresses:
                account = _resolve_address(conn, address.lower())
                if account is None:
                    out.append(None)
                    continue
                mailbox = _mailbox_record(conn, account.id, mailbox_name) or _mailbox_record(conn, account.id, INBOX)
                if mailbox is None:
                    raise MailboxNotFound(INBOX)
                out.append(DeliveryTarget(account, mailbox))
            return out

        return await self._read(txn, inline=len(addresses) <= INLINE_ROWS)

    # ---- mailboxes

    async def list_mailboxes(self, account_id: int) -> list[MailboxRecord]:
        rows = await self._read(
            lambda conn: _rows(
                conn,
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.account_id = ? ORDER BY m.name <> 'INBOX', m.name",
                (account_id,),
            ),
            inline=True,  # an account's folders: tens of rows
        )
        return [_mailbox_from_row(r) for r in rows]

    async def get_mailbox(self, account_id: int, name: str) -> MailboxRecord:
        name = _mailbox_name(name)
        record = self._statement(lambda conn: _mailbox_record(conn, account_id, name))
        if record is None:
            raise MailboxNotFound(name)
        return record

    async def create_mailbox(self, account_id: int, name: str, special_use: str = "") -> MailboxRecord:
        name = _mailbox_name(name)

        def txn(conn: sqlite3.Connection) -> MailboxRecord:
            _require_account_id(conn, account_id)
            if _mailbox_record(conn, account_id, name) is not None:
                raise AlreadyExists(name)
            _insert_mailbox(conn, account_id, name, special_use)
            record = _mailbox_record(conn, account_id, name)
            assert record is not None
            return record

        return await self._write(txn)

    async def adopt_uids(self, mailbox_id: int, uidvalidity: int, uidnext: int) -> MailboxRecord:
        def txn(conn: sqlite3.Connection) -> MailboxRecord:
            mailbox = _mailbox(conn, mailbox_id)
            adopted = bool(_one(conn, "SELECT adopted FROM mailboxes WHERE id = ?", (mailbox_id,))[0])
            check_adoption(uidvalidity, mailbox.uidvalidity, mailbox.highestmodseq, adopted)
            if uidvalidity:
                sql = "UPDATE mailboxes SET uidvalidity = ?, adopted = 1 WHERE id = ?"
                conn.execute(sql, (uidvalidity, mailbox_id))
                conn.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = 'uidvalidity'", (uidvalidity,))
            conn.execute("UPDATE mailboxes SET uidnext = MAX(uidnext, ?) WHERE id = ?", (uidnext, mailbox_id))
            row = _one(conn, f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.id = ?", (mailbox_id,))
            return _mailbox_from_row(row)

        return await self._write(txn)

    async def delete_mailbox(self, account_id: int, name: str) -> ExpungeResult:
        name = _mailbox_name(name)
        if name == INBOX:
            raise NotAllowed("INBOX cannot be deleted")

        def txn(conn: sqlite3.Connection) -> ExpungeResult:
            record = _mailbox_record(conn, account_id, name)
            if record is None:
                raise MailboxNotFound(name)
            result = _expunge_all(conn, _mailbox(conn, record.id), only_deleted=False, uids=None)
            # Cascades to the change log; subscriptions are by name and stay (RFC 3501 §6.3.6).
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (record.id,))
            return result

        return await self._write(txn)

    async def rename_mailbox(self, account_id: int, name: str, new_name: str) -> None:
        name, new_name = _mailbox_name(name), _mailbox_name(new_name)

        def txn(conn: sqlite3.Connection) -> None:
            source = _mailbox_record(conn, account_id, name)
            if source is None:
                raise MailboxNotFound(name)
            if _mailbox_record(conn, account_id, new_name) is not None:
                raise AlreadyExists(new_name)
            if name == INBOX:
                # RFC 3501 §6.3.5: move INBOX's messages to a new mailbox, INBOX stays (empty);
                # its children are not renamed.
                target_id = _insert_mailbox(conn, account_id, new_name, "")
                uids = [
                    r[0]
                    for r in _rows(conn, "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (source.id,))
                ]
                if uids:
                    _copy_rows(conn, source.id, uids, target_id)
                    _remove_messages(conn, source.id, uids, _bump_modseq(conn, source.id))
                return
            if new_name.startswith(name + "/"):
                raise NotAllowed(f"cannot rename {name!r} into its own child {new_name!r}")
            prefix = name + "/"
            family = _rows(
                conn,
                "SELECT id, name FROM mailboxes WHERE account_id = ? AND (name = ? OR substr(name, 1, ?) = ?)",
                (account_id, name, len(prefix), prefix),
            )
            renames = [(mailbox_id, new_name + old[len(name) :]) for mailbox_id, old in family]
            for _, target in renames:
                if _mailbox_record(conn, account_id, target) is not None:
                    raise AlreadyExists(target)
            conn.executemany("UPDATE mailboxes SET name = ? WHERE id = ?", [(t, i) for i, t in renames])

        await self._write(txn)

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        name = _mailbox_name(name)

        def txn(conn: sqlite3.Connection) -> None:
            _require_account_id(conn, account_id)
            if subscribed:
                conn.execute("INSERT OR IGNORE INTO subscriptions (account_id, name) VALUES (?, ?)", (account_id, name))
            else:
                conn.execute("DELETE FROM subscriptions WHERE account_id = ? AND name = ?", (account_id, name))

        await self._write(txn)

    async def list_subscriptions(self, account_id: int) -> list[str]:
        rows = await self._read(
            lambda conn: _rows(conn, "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name", (account_id,))
        )
        return [r[0] for r in rows]

    async def mailbox_counts(self, mailbox_id: int) -> MailboxCounts:
        def txn(conn: sqlite3.Connection) -> MailboxCounts:
            mailbox = _mailbox(conn, mailbox_id)
            row = _one(
                conn,
                f"SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(NOT {_HAS_SEEN}), 0),"
                f" COALESCE(SUM({_HAS_DELETED}), 0), COALESCE(SUM(uid >= ?), 0),"
                f" COALESCE(MIN(CASE WHEN NOT {_HAS_SEEN} THEN uid END), 0)"
                " FROM messages WHERE mailbox_id = ?",
                (mailbox.recent_floor, mailbox_id),
            )
            return MailboxCounts(
                messages=row[0], size=row[1], unseen=row[2], deleted=row[3], recent=row[4], first_unseen_uid=row[5]
            )

        # The sums read every message of the mailbox: inline only for a small one (SELECT, STATUS).
        probe = "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE mailbox_id = ? LIMIT ?)"
        small = self._statement(lambda conn: _one(conn, probe, (mailbox_id, INLINE_ROWS + 1)))[0] <= INLINE_ROWS
        return await self._read(txn, inline=small)

    async def claim_recent(self, mailbox_id: int) -> tuple[int, int]:
        def txn(conn: sqlite3.Connection) -> tuple[int, int]:
            mailbox = _mailbox(conn, mailbox_id)
            conn.execute("UPDATE mailboxes SET recent_floor = uidnext WHERE id = ?", (mailbox_id,))
            return mailbox.recent_floor, mailbox.uidnext

        return await self._write(txn)

    # ---- messages

    async def insert_message(self, mailbox_id: int, message: NewMessage, enforce_quota: bool) -> InsertResult:
        return await self._write(lambda conn: _insert_message(conn, mailbox_id, message, enforce_quota))

    async def deliver(
        self, mailbox_ids: Sequence[int], message: NewMessage, enforce_quota: bool
    ) -> list[InsertResult | OverQuota | MailboxNotFound]:
        def txn(conn: sqlite3.Connection) -> list[InsertResult | OverQuota | MailboxNotFound]:
            results: list[InsertResult | OverQuota | MailboxNotFound] = []
            for mailbox_id in mailbox_ids:
                # A savepoint per target: one refused target leaves no trace and fails no other.
                conn.execute("SAVEPOINT target")
                try:
                    results.append(_insert_message(conn, mailbox_id, message, enforce_quota))
                except (OverQuota, MailboxNotFound) as exc:
                    conn.execute("ROLLBACK TO target")
                    results.append(exc)
                conn.execute("RELEASE target")
            return results

        return await self._write(txn)

    async def fetch(
        self, mailbox_id: int, uids: UidRanges | None = None, changed_since: int = 0, with_header: bool = False
    ) -> list[MessageRecord]:
        columns = (
            "uid, modseq, flags, internal_date, tz_offset, size, blob_key, envelope, structure, "
            + ("header" if with_header else "x''")
            + ", sent_date, save_date, pop3_uidl"
        )

        def txn(conn: sqlite3.Connection) -> list[MessageRecord]:
            _mailbox(conn, mailbox_id)
            return [
                MessageRecord(
                    uid=r[0],
                    modseq=r[1],
                    flags=_flags_tuple(r[2]),
                    internal_date=r[3],
                    tz_offset=r[4],
                    size=r[5],
                    blob_key=r[6],
                    envelope=bytes(r[7]),
                    structure=bytes(r[8]),
                    header=bytes(r[9]),
                    sent_date=r[10],
                    save_date=r[11] if r[11] is not None else r[3],
                    pop3_uidl=r[12],
                )
                for r in _select_uids(conn, mailbox_id, uids, columns, "AND modseq > ?", (changed_since,))
            ]

        return await self._read(txn, inline=uids is not None and _span(uids) <= INLINE_ROWS)

    async def store_flags(
        self, mailbox_id: int, uids: UidRanges, mode: StoreMode, flags: Sequence[str], unchanged_since: int | None
    ) -> tuple[list[FlagUpdate], list[int]]:
        wanted = canonical_flags(flags)

        def txn(conn: sqlite3.Connection) -> tuple[list[FlagUpdate], list[int]]:
            _mailbox(conn, mailbox_id)
            changed: list[tuple[int, frozenset[str]]] = []
            failed: list[int] = []
            for uid, modseq, text in _select_uids(conn, mailbox_id, uids, "uid, modseq, flags"):
                # RFC 7162 §3.1.3: UNCHANGEDSINCE fails messages modified after it.
                if unchanged_since is not None and modseq > unchanged_since:
                    failed.append(uid)
                    continue
                current = frozenset(text.split())
                new = _apply_mode(current, mode, wanted)
                if new != current:
                    changed.append((uid, new))
            if not changed:
                return [], failed
            # Messages changed together share one MODSEQ (RFC 7162 §3.1.3 allows it).
            modseq = _bump_modseq(conn, mailbox_id)
            conn.executemany(
                "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                [(_flags_text(new), modseq, mailbox_id, uid) for uid, new in changed],
            )
            return [FlagUpdate(uid, modseq, tuple(sorted(new))) for uid, new in changed], failed

        return await self._write(txn)

    async def copy(
        self, mailbox_id: int, uids: UidRanges, destination_id: int, move: bool, enforce_quota: bool
    ) -> CopyResult:
        def txn(conn: sqlite3.Connection) -> CopyResult:
            source = _mailbox(conn, mailbox_id)
            destination = _mailbox(conn, destination_id)
            rows = _select_uids(conn, mailbox_id, uids, "uid, size, blob_key")
            if not rows:
                return CopyResult(destination.uidvalidity, (), destination.highestmodseq, (), 0)
            size = sum(r[1] for r in rows)
            same_account = source.account_id == destination.account_id
            if enforce_quota and not (move and same_account):
                _check_quota(conn, destination.account_id, size, len(rows))
            source_uids = [r[0] for r in rows]
            mapping, destination_modseq = _copy_rows(conn, mailbox_id, source_uids, destination_id)
            source_modseq = 0
            if move:
                # RFC 6851 §3.3: the source sees the moved messages expunged.
                source_modseq = _bump_modseq(conn, mailbox_id)
                _remove_messages(conn, mailbox_id, source_uids, source_modseq)
                if not same_account:
                    _add_usage(conn, source.account_id, -size, -len(rows))
                    _add_usage(conn, destination.account_id, size, len(rows))
            else:
                _reference_blobs(conn, [r[2] for r in rows])
                _add_usage(conn, destination.account_id, size, len(rows))
            return CopyResult(
                uidvalidity=destination.uidvalidity,
                mapping=tuple(mapping),
                destination_modseq=destination_modseq,
                expunged=tuple(source_uids) if move else (),
                source_modseq=source_modseq,
            )

        return await self._write(txn)

    async def expunge(self, mailbox_id: int, uids: UidRanges | None) -> ExpungeResult:
        return await self._write(lambda conn: _expunge_all(conn, _mailbox(conn, mailbox_id), True, uids))

    async def changes_since(self, mailbox_id: int, modseq: int) -> list[ChangeRecord]:
        # Most catch-ups (NOOP, IDLE, SELECT of an indexed mailbox) find a few changes or none: read
        # at most INLINE_ROWS of each kind inline (the (mailbox_id, modseq) indexes bound the work),
        # and only a longer log from a reader thread.
        found = await self._read(lambda conn: _changes_since(conn, mailbox_id, modseq, INLINE_ROWS + 1), inline=True)
        if found is not None:
            return found
        listed = await self._read(lambda conn: _changes_since(conn, mailbox_id, modseq, None))
        assert listed is not None
        return listed

    async def pruned_modseq(self, mailbox_id: int) -> int:
        def txn(conn: sqlite3.Connection) -> int:
            row = _one(conn, "SELECT pruned_modseq FROM mailboxes WHERE id = ?", (mailbox_id,))
            if row is None:
                raise MailboxNotFound(str(mailbox_id))
            return int(row[0])

        return self._statement(txn)

    async def prune_changes(self, before: float) -> int:
        def txn(conn: sqlite3.Connection) -> int:
            # Each mailbox remembers the newest MODSEQ it forgets: a client older than that gets
            # VANISHED (EARLIER) for every UID it may hold that is not there (RFC 7162 §3.2.5.2).
            conn.execute(
                "UPDATE mailboxes SET pruned_modseq = MAX(pruned_modseq,"
                " (SELECT MAX(modseq) FROM changes c WHERE c.mailbox_id = mailboxes.id AND c.at < ?))"
                " WHERE id IN (SELECT DISTINCT mailbox_id FROM changes WHERE at < ?)",
                (before, before),
            )
            return conn.execute("DELETE FROM changes WHERE at < ?", (before,)).rowcount

        return await self._write(txn)

    # ---- quota and blobs

    async def recompute_usage(self, account_id: int) -> tuple[int, int]:
        def txn(conn: sqlite3.Connection) -> tuple[int, int]:
            _require_account_id(conn, account_id)
            used_bytes, used_messages = _one(
                conn,
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM messages"
                " WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = ?)",
                (account_id,),
            )
            conn.execute(
                "UPDATE accounts SET used_bytes = ?, used_messages = ? WHERE id = ?",
                (used_bytes, used_messages, account_id),
            )
            return int(used_bytes), int(used_messages)

        return await self._write(txn)

    async def blob_referenced(self, key: str) -> bool:
        row = self._statement(lambda conn: _one(conn, "SELECT refcount FROM blobs WHERE key = ?", (key,)))
        return row is not None and row[0] > 0

    async def kept_body(self, key: str) -> bytes | None:
        # Inline: one row by primary key, at most ADR 0045's limit of bytes.
        row = await self._read(lambda conn: _one(conn, "SELECT body FROM blobs WHERE key = ?", (key,)), inline=True)
        return None if row is None else row[0]

    async def body_references(self, account_id: int | None = None) -> list[BodyReference]:
        sql = (
            "SELECT a.name, b.id, b.name, b.uidvalidity, m.uid, m.blob_key, m.size FROM messages m"
            " JOIN mailboxes b ON b.id = m.mailbox_id JOIN accounts a ON a.id = b.account_id"
        )
        params: tuple[int, ...] = ()
        if account_id is not None:
            sql += " WHERE a.id = ?"
            params = (account_id,)
        rows = await self._read(lambda conn: _rows(conn, sql + " ORDER BY a.name, b.name, m.uid", params))
        return [BodyReference(*r) for r in rows]

    async def remove_messages(self, mailbox_id: int, uids: Sequence[int]) -> ExpungeResult:
        ranges = [(u, u) for u in uids]
        return await self._write(lambda conn: _expunge_all(conn, _mailbox(conn, mailbox_id), False, ranges))

    # ---- leases

    async def acquire_lease(self, name: str, holder: str, ttl_seconds: int) -> tuple[bool, str]:
        def txn(conn: sqlite3.Connection) -> tuple[bool, str]:
            now = time.time()
            row = _one(conn, "SELECT holder, expires FROM leases WHERE name = ?", (name,))
            if row is not None and row[0] != holder and row[1] > now:
                return False, str(row[0])
            conn.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires",
                (name, holder, now + ttl_seconds),
            )
            return True, holder

        return await self._write(txn)

    async def release_lease(self, name: str, holder: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)))

    # ---- failed logins (ADR 0046)

    async def auth_failures(self, ip: str, account: str, window: float) -> tuple[int, int, int]:
        since = time.time() - window
        row = await self._read(
            lambda conn: _one(
                conn,
                "SELECT (SELECT COUNT(*) FROM auth_failures WHERE ip = ? AND at > ?),"
                " (SELECT COUNT(*) FROM auth_failures WHERE account = ? AND account != '' AND at > ?),"
                " (SELECT COUNT(*) FROM auth_failures WHERE ip = ? AND account = ? AND account != '' AND at > ?)",
                (ip, since, account, since, ip, account, since),
            ),
            inline=True,
        )
        return int(row[0]), int(row[1]), int(row[2])

    async def record_auth_failure(self, ip: str, account: str, window: float) -> None:
        def txn(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("DELETE FROM auth_failures WHERE at <= ?", (now - window,))
            conn.execute("INSERT INTO auth_failures (ip, account, at) VALUES (?, ?, ?)", (ip, account, now))

        await self._write(txn)

    async def forget_auth_failures(self, ip: str, account: str) -> None:
        await self._write(
            lambda conn: conn.execute("DELETE FROM auth_failures WHERE ip = ? AND account = ?", (ip, account))
        )


if TYPE_CHECKING:
    # mypy checks here that the class satisfies the Protocol.
    _conforms: MetadataStore = SqliteMetadataStore("")


def _forward(row: Sequence[Any]) -> ForwardRecord:
    return ForwardRecord(str(row[0]), tuple(str(row[1]).split("\n")), bool(row[2]))
