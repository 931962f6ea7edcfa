"""PostgreSQL metadata store (asyncpg): what several mailstore replicas share (ADR 0027, 0028).

Every Protocol method is one transaction on a pooled connection (READ COMMITTED). The rules that
keep UIDs and MODSEQs right with any number of replicas writing at once:
- A write that touches a mailbox's messages first locks the mailbox rows it touches
  (SELECT ... FOR UPDATE, in id order), then the rows of their accounts (in id order) when it
  changes usage. The lock is held to COMMIT, so per mailbox such writes run one after another:
  UIDs and MODSEQs are allocated (UPDATE ... RETURNING on the locked row) in commit order, and a
  reader never sees UID n+1 committed before UID n. One order for all locks keeps deadlocks out
  of the common paths; a deadlock or serialization failure that still happens (PostgreSQL
  detects it) is retried as a whole transaction.
- Nothing is cached in the process; UIDVALIDITY comes from a sequence (never reused).
- A write, once sent, is shielded from the caller's cancellation: it commits or fails on its own
  (as on SQLite's writer thread), which is what the core's `settle` expects (ADR 0010).
- Lease expiry is judged by the database's clock, one clock for every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from mailstack.message.flags import canonical_flags
from mailstack.storage.errors import (
    AccountNotFound,
    AlreadyExists,
    MailboxNotFound,
    NotAllowed,
    OverQuota,
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
from mailstack.storage.metadata.postgresql_schema import NAME_CONSTRAINTS, apply_migrations
from mailstack.storage.metadata.rules import (
    INBOX,
    UID_MAX,
    apply_mode,
    check_adoption,
    check_kept_uid,
    flags_text,
    flags_tuple,
)
from mailstack.storage.metadata.rules import mailbox_name as _mailbox_name

T = TypeVar("T")
Conn = Any  # an asyncpg connection (asyncpg ships no type information)

RETRIES = 8  # whole-transaction attempts on deadlock / serialization failure
COMMAND_TIMEOUT = 30.0  # seconds; a statement (or a lock wait) longer than this is "unavailable"

# The database cannot be used right now: the caller gets a temporary error.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection left mid-operation (e.g. by a cancelled call): drop it, retry later
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)


class _Conflict(Exception):
    """A transaction lost a race it can only win by starting again (retried like a deadlock)."""


_RETRY: tuple[type[BaseException], ...] = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError, _Conflict)

_ACCOUNT_COLUMNS = "id, name, password_hash, quota_bytes, quota_messages, used_bytes, used_messages"
_MAILBOX_COLUMNS = (
    "m.id, m.account_id, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, m.special_use,"
    " EXISTS (SELECT 1 FROM subscriptions s WHERE s.account_id = m.account_id AND s.name = m.name)"
)
_SEEN = "strpos(' ' || flags || ' ', ' \\Seen ') > 0"
_DELETED = "strpos(' ' || flags || ' ', ' \\Deleted ') > 0"
_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"  # the database's clock: one for every replica
_MESSAGE_COLUMNS = "uid, modseq, flags, internal_date, tz_offset, size, blob_key, envelope, structure"


def _redacted(url: str) -> str:
    """The URL without a password, for messages and logs (ARCHITECTURE.md: secrets never in logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))


@dataclass(slots=True)
class _Mailbox:
    id: int
    account_id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    recent_floor: int


@dataclass(slots=True)
class _Usage:
    """An account's quota and usage as locked in this transaction (changed as messages are added)."""

    quota_bytes: int
    quota_messages: int
    used_bytes: int
    used_messages: int

    def check(self, account_id: int, add_bytes: int, add_messages: int) -> None:
        if (self.quota_bytes and self.used_bytes + add_bytes > self.quota_bytes) or (
            self.quota_messages and self.used_messages + add_messages > self.quota_messages
        ):
            raise OverQuota(f"account {account_id}: +{add_bytes} bytes, +{add_messages} messages")


@dataclass(slots=True)
class _Locked:
    mailboxes: dict[int, _Mailbox]
    usage: dict[int, _Usage]

    def mailbox(self, mailbox_id: int) -> _Mailbox:
        found = self.mailboxes.get(mailbox_id)
        if found is None:
            raise MailboxNotFound(str(mailbox_id))
        return found


# ------------------------------------------------------------------ SQL helpers (inside a transaction)


async def _lock(conn: Conn, mailbox_ids: Iterable[int], *, accounts: bool = True) -> _Locked:
    """Lock the mailboxes, then (accounts=True) their accounts, each in id order (see the module docstring)."""
    rows = await conn.fetch(
        "SELECT id, account_id, uidvalidity, uidnext, highestmodseq, recent_floor FROM mailboxes"
        " WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        sorted(set(mailbox_ids)),
    )
    locked = _Locked({r[0]: _Mailbox(*r) for r in rows}, {})
    if accounts and locked.mailboxes:
        account_rows = await conn.fetch(
            "SELECT id, quota_bytes, quota_messages, used_bytes, used_messages FROM accounts"
            " WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
            sorted({m.account_id for m in locked.mailboxes.values()}),
        )
        locked.usage = {r[0]: _Usage(r[1], r[2], r[3], r[4]) for r in account_rows}
    return locked


async def _add_usage(conn: Conn, locked: _Locked, account_id: int, add_bytes: int, add_messages: int) -> None:
    await conn.execute(
        "UPDATE accounts SET used_bytes = GREATEST(used_bytes + $2, 0), used_messages = GREATEST(used_messages + $3, 0)"
        " WHERE id = $1",
        account_id,
        add_bytes,
        add_messages,
    )
    usage = locked.usage.get(account_id)
    if usage is not None:
        usage.used_bytes = max(usage.used_bytes + add_bytes, 0)
        usage.used_messages = max(usage.used_messages + add_messages, 0)


async def _allocate(conn: Conn, mailbox: _Mailbox, count: int) -> tuple[int, int]:
    """Reserve count UIDs and one new MODSEQ in a locked mailbox: (first uid, modseq)."""
    row = await conn.fetchrow(
        "UPDATE mailboxes SET uidnext = uidnext + $2, highestmodseq = highestmodseq + 1 WHERE id = $1"
        " RETURNING uidnext, highestmodseq",
        mailbox.id,
        count,
    )
    mailbox.uidnext, mailbox.highestmodseq = int(row[0]), int(row[1])
    return mailbox.uidnext - count, mailbox.highestmodseq


async def _bump_modseq(conn: Conn, mailbox: _Mailbox) -> int:
    mailbox.highestmodseq = int(
        await conn.fetchval(
            "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1 RETURNING highestmodseq", mailbox.id
        )
    )
    return mailbox.highestmodseq


async def reference_blobs(conn: Conn, keys: Iterable[str]) -> None:
    counts = sorted(Counter(keys).items())  # one order for every writer: fewer lock waits in a cycle
    await conn.execute(
        "INSERT INTO blobs (key, refcount) SELECT k, c FROM unnest($1::text[], $2::bigint[]) AS t(k, c)"
        " ON CONFLICT (key) DO UPDATE SET refcount = blobs.refcount + excluded.refcount",
        [k for k, _ in counts],
        [c for _, c in counts],
    )


async def release_blobs(conn: Conn, keys: Iterable[str]) -> list[str]:
    """Drop one reference per key occurrence; delete and return the keys nobody references any more."""
    counts = sorted(Counter(keys).items())
    if not counts:
        return []
    rows = await conn.fetch(
        "UPDATE blobs b SET refcount = b.refcount - t.c FROM unnest($1::text[], $2::bigint[]) AS t(k, c)"
        " WHERE b.key = t.k RETURNING b.key, b.refcount",
        [k for k, _ in counts],
        [c for _, c in counts],
    )
    left = {r[0]: r[1] for r in rows}
    freed = [k for k, _ in counts if left.get(k, 0) <= 0]
    if freed:
        await conn.execute("DELETE FROM blobs WHERE key = ANY($1::text[])", freed)
    return freed


async def _ranges(conn: Conn, mailbox_id: int, uids: UidRanges) -> list[tuple[int, int]]:
    """uids normalised; the highest UID is read only when "*" (0) needs it."""
    needs_max = any(first == 0 or last == 0 for first, last in uids)
    max_uid = 0
    if needs_max:
        max_uid = int(
            await conn.fetchval("SELECT COALESCE(MAX(uid), 0) FROM messages WHERE mailbox_id = $1", mailbox_id)
        )
    return uidranges.normalise(uids, max_uid)


async def _select(
    conn: Conn,
    mailbox_id: int,
    uids: UidRanges | None,
    columns: str,
    *,
    only_deleted: bool = False,
    changed_since: int = 0,
) -> list[Any]:
    """Rows of the mailbox's messages in uids (None = all), in UID order. The ranges are joined as
    arrays, so any number of them is one statement using the (mailbox_id, uid) key."""
    params: list[Any] = [mailbox_id, changed_since]
    join = ""
    if uids is not None:
        merged = await _ranges(conn, mailbox_id, uids)
        if not merged:
            return []
        join = " JOIN unnest($3::bigint[], $4::bigint[]) AS r(lo, hi) ON m.uid BETWEEN r.lo AND r.hi"
        params += [[lo for lo, _ in merged], [hi for _, hi in merged]]
    deleted = f" AND {_DELETED}" if only_deleted else ""
    return list(
        await conn.fetch(
            f"SELECT {columns} FROM messages m{join} WHERE m.mailbox_id = $1 AND m.modseq > $2{deleted} ORDER BY m.uid",
            *params,
        )
    )


async def _remove_messages(conn: Conn, mailbox_id: int, uids: Sequence[int], modseq: int) -> None:
    """Delete rows and log their expunge at modseq (RFC 7162 §3.2.5: VANISHED needs the log)."""
    await conn.execute("DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])", mailbox_id, uids)
    await conn.execute(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind, at)"
        " SELECT $1::bigint, $2::bigint, u, 'expunge', $3::float8 FROM unnest($4::bigint[]) AS u",
        mailbox_id,
        modseq,
        time.time(),  # the caller's clock, as prune_changes(before) is
        uids,
    )


async def _copy_rows(
    conn: Conn, source_id: int, source_uids: Sequence[int], destination: _Mailbox
) -> tuple[list[tuple[int, int]], int]:
    """Copy rows (ascending source UID order) to new UIDs in destination; returns (mapping, modseq)."""
    first, modseq = await _allocate(conn, destination, len(source_uids))
    mapping = [(uid, first + i) for i, uid in enumerate(source_uids)]
    await conn.execute(
        "INSERT INTO messages (mailbox_id, uid, modseq, created_modseq, flags, internal_date, tz_offset, size,"
        " blob_key, envelope, structure, header, sent_date, save_date)"
        " SELECT $1::bigint, map.new, $2::bigint, $2::bigint, m.flags, m.internal_date, m.tz_offset, m.size,"
        " m.blob_key, m.envelope, m.structure, m.header, m.sent_date, $6::bigint"
        " FROM unnest($3::bigint[], $4::bigint[]) AS map(old, new)"
        " JOIN messages m ON m.mailbox_id = $5 AND m.uid = map.old",
        destination.id,
        modseq,
        [old for old, _ in mapping],
        [new for _, new in mapping],
        source_id,
        int(time.time()),  # RFC 8514: a copy (or move) is saved now
    )
    return mapping, modseq


# The whole of an insert in one statement (one round trip; alone, it is its own transaction): lock the
# mailbox row, then its account's row only if the quota allows the message, allocate UID and MODSEQ
# on the locked row, insert, reference the blob, count the usage. Rows locked after this statement's
# snapshot was taken are re-read at their newest version (READ COMMITTED's re-check), so the
# allocation and the quota check see every commit before the lock. The lock order is ADR 0028's:
# the mailbox, then its account.
_INSERT = """
WITH mb AS (
    SELECT id, account_id, uidvalidity, uidnext FROM mailboxes WHERE id = $1 FOR UPDATE
), acc AS (
    SELECT a.id FROM accounts a JOIN mb ON a.id = mb.account_id
    WHERE NOT $2::boolean OR ((a.quota_bytes = 0 OR a.used_bytes + $3::bigint <= a.quota_bytes)
        AND (a.quota_messages = 0 OR a.used_messages + 1 <= a.quota_messages))
    FOR UPDATE OF a
), alloc AS (
    UPDATE mailboxes m SET uidnext = GREATEST(m.uidnext, $13::bigint) + 1, highestmodseq = m.highestmodseq + 1
    FROM acc WHERE m.id = $1 AND ($13::bigint = 0 OR $13::bigint >= m.uidnext)
    RETURNING m.uidnext - 1 AS uid, m.highestmodseq AS modseq
), ins AS (
    INSERT INTO messages (mailbox_id, uid, modseq, created_modseq, flags, internal_date, tz_offset, size,
        blob_key, envelope, structure, header, sent_date, save_date, pop3_uidl)
    SELECT $1::bigint, uid, modseq, modseq, $4::text, $5::bigint, $6::integer, $3::bigint, $7::text,
        $8::bytea, $9::bytea, $10::bytea, $11::bigint, $12::bigint, $14::text FROM alloc
    RETURNING uid, modseq
), blob AS (
    INSERT INTO blobs (key, refcount) SELECT $7::text, 1 FROM ins
    ON CONFLICT (key) DO UPDATE SET refcount = blobs.refcount + 1
), counted AS (
    UPDATE accounts a SET used_bytes = a.used_bytes + $3::bigint, used_messages = a.used_messages + 1
    FROM acc, ins WHERE a.id = acc.id
)
SELECT (SELECT uidvalidity FROM mb), (SELECT uid FROM ins), (SELECT modseq FROM ins), (SELECT uidnext FROM mb)
"""


async def _insert_message(conn: Conn, mailbox_id: int, message: NewMessage, enforce: bool) -> InsertResult:
    if message.uid > UID_MAX:
        check_kept_uid(message.uid, 1)
    uidvalidity, uid, modseq, uidnext = await conn.fetchrow(
        _INSERT,
        mailbox_id,
        enforce,
        message.size,
        flags_text(canonical_flags(message.flags)),
        message.internal_date,
        message.tz_offset,
        message.blob_key,
        message.envelope,
        message.structure,
        message.header,
        message.sent_date,
        int(time.time()),  # RFC 8514 save date
        message.uid,  # 0: the next UID
        message.pop3_uidl,
    )
    if uidvalidity is None:
        raise MailboxNotFound(str(mailbox_id))
    if uid is None and message.uid:  # a kept UID below UIDNEXT, or over quota: nothing was written
        check_kept_uid(message.uid, uidnext)
    if uid is None:  # the account row did not pass the quota check: nothing was written
        raise OverQuota(f"mailbox {mailbox_id}: +{message.size} bytes, +1 message")
    return InsertResult(uid=uid, uidvalidity=uidvalidity, modseq=modseq)


async def _expunge(
    conn: Conn, locked: _Locked, mailbox_id: int, only_deleted: bool, uids: UidRanges | None
) -> ExpungeResult:
    mailbox = locked.mailbox(mailbox_id)
    rows = await _select(conn, mailbox_id, uids, "uid, size, blob_key", only_deleted=only_deleted)
    if not rows:
        return ExpungeResult((), mailbox.highestmodseq, (), 0, 0)
    modseq = await _bump_modseq(conn, mailbox)
    expunged = [r[0] for r in rows]
    await _remove_messages(conn, mailbox_id, expunged, modseq)
    freed = await release_blobs(conn, [r[2] for r in rows])
    freed_bytes = sum(r[1] for r in rows)
    await _add_usage(conn, locked, mailbox.account_id, -freed_bytes, -len(rows))
    return ExpungeResult(tuple(expunged), modseq, tuple(freed), freed_bytes, len(rows))


async def _account_by_name(conn: Conn, name: str) -> AccountRecord | None:
    row = await conn.fetchrow(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = $1", name)
    return AccountRecord(*row) if row else None


async def _resolve_address(conn: Conn, address: str) -> AccountRecord | None:
    """An account by its own name, then an alias, then the domain's catch-all: one statement."""
    candidates = [address]
    if "@" in address:
        candidates.append("@" + address.rsplit("@", 1)[1])
    row = await conn.fetchrow(
        f"SELECT {_ACCOUNT_COLUMNS} FROM ("
        " SELECT a.*, 0 AS rank FROM accounts a WHERE a.name = $1"
        " UNION ALL SELECT a.*, 1 + array_position($2::text[], al.address) FROM aliases al"
        " JOIN accounts a ON a.id = al.account_id WHERE al.address = ANY($2::text[])"
        ") found ORDER BY rank LIMIT 1",
        address,
        candidates,
    )
    return AccountRecord(*row) if row else None


async def _account_id(conn: Conn, name: str) -> int:
    found = await conn.fetchval("SELECT id FROM accounts WHERE name = $1", name)
    if found is None:
        raise AccountNotFound(name)
    return int(found)


def _mailbox_record(row: Any) -> MailboxRecord:
    mailbox_id, account_id, name, uidvalidity, uidnext, highestmodseq, special_use, subscribed = row
    return MailboxRecord(
        mailbox_id, account_id, name, uidvalidity, uidnext, highestmodseq, special_use, bool(subscribed)
    )


async def _find_mailbox(conn: Conn, account_id: int, name: str) -> MailboxRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.account_id = $1 AND m.name = $2", account_id, name
    )
    return _mailbox_record(row) if row else None


async def _insert_mailboxes(conn: Conn, account_id: int, names: Sequence[str], special_uses: Sequence[str]) -> None:
    await conn.execute(
        "INSERT INTO mailboxes (account_id, name, uidvalidity, special_use)"
        " SELECT $1::bigint, n, nextval('uidvalidity_seq'), s"
        " FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(n, s, i) ORDER BY i",
        account_id,
        names,
        special_uses,
    )


def _message(row: Any) -> MessageRecord:
    return MessageRecord(
        uid=row[0],
        modseq=row[1],
        flags=flags_tuple(row[2]),
        internal_date=row[3],
        tz_offset=row[4],
        size=row[5],
        blob_key=row[6],
        envelope=bytes(row[7]),
        structure=bytes(row[8]),
        header=bytes(row[9]),
        sent_date=row[10],
        save_date=row[11],
        pop3_uidl=row[12],
    )


async def _keep_session(conn: Conn) -> None:
    """The pool's reset of a returned connection. asyncpg rolls back an open transaction itself; its
    default reset query (unlock advisory locks, close cursors, UNLISTEN, RESET ALL) would cost a round
    trip per call for session state this store never sets (its advisory lock is transaction-scoped)."""


async def _single(outcome: Awaitable[T]) -> list[T]:
    return [await outcome]


# ------------------------------------------------------------------ the store


def _no_body(message: NewMessage) -> None:
    # A body given to a store that does not keep bodies would be lost with no trace: refuse.
    if message.body is not None:
        raise ValueError("this metadata store keeps no bodies (keeps_bodies is False)")


class PostgresMetadataStore:
    # Bodies stay in the blob store (ADR 0045): replicas share the database, whose rows should stay small.
    keeps_bodies = False

    def __init__(self, url: str, *, min_connections: int = 1, max_connections: int = 10) -> None:
        # The password comes from the URL or, better, from PGPASSWORD / ~/.pgpass (libpq's rules).
        self._url = url
        self._min = min_connections
        self._max = max_connections
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False
        self._pending: set[asyncio.Task[Any]] = set()

    # ---- connections and transactions

    @contextlib.contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"metadata database {_redacted(self._url)}: {exc}") from exc
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name in NAME_CONSTRAINTS:
                raise AlreadyExists(str(exc.detail or exc)) from exc
            raise

    async def _get_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise StorageUnavailable("metadata store is closed")
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    with self._mapped_errors():
                        self._pool = await asyncpg.create_pool(
                            self._url,
                            min_size=self._min,
                            max_size=self._max,
                            command_timeout=COMMAND_TIMEOUT,
                            reset=_keep_session,
                        )
        assert self._pool is not None
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        pool = await self._get_pool()
        with self._mapped_errors():
            async with pool.acquire() as conn:
                yield conn

    async def _attempts(self, fn: Callable[[Conn], Awaitable[T]], transaction: bool) -> T:
        for attempt in range(RETRIES):
            try:
                async with self._connection() as conn:
                    if not transaction:  # one statement: its own transaction, one round trip
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except _RETRY:
                # Another replica's transaction won a lock cycle; start again after a short, jittered pause.
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise StorageUnavailable(f"metadata transaction still conflicting after {RETRIES} attempts")

    async def _write(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        """One read-write transaction, retried whole on deadlock; shielded from the caller's cancellation.
        transaction=False: fn runs a single statement, which is a transaction by itself."""
        if self._closed:
            raise StorageUnavailable("metadata store is closed")
        task = asyncio.ensure_future(self._attempts(fn, transaction))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    async def _read(self, fn: Callable[[Conn], Awaitable[T]], *, snapshot: bool = False) -> T:
        """snapshot: run fn's statements in one REPEATABLE READ transaction (they see the same data)."""
        async with self._connection() as conn:
            if not snapshot:
                return await fn(conn)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(conn)

    # ---- for siblings on the same database (the outbound queue, storage/queue/postgresql.py)

    async def run_write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """fn as one read-write transaction, with this store's retries, error mapping and shielding."""
        return await self._write(fn)

    async def run_read(self, fn: Callable[[Conn], Awaitable[T]], *, snapshot: bool = False) -> T:
        return await self._read(fn, snapshot=snapshot)

    # ---- lifecycle

    async def migrate(self) -> None:
        async with self._connection() as conn:
            await apply_migrations(conn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pending:
            await asyncio.wait(list(self._pending))  # writes already sent finish first
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*_UNAVAILABLE):
                await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)

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
        wanted: dict[str, str] = {INBOX: ""}  # INBOX always exists
        for box, special_use in mailboxes:
            wanted[_mailbox_name(box)] = special_use

        async def txn(conn: Conn) -> AccountRecord:
            account_id = await conn.fetchval(
                "INSERT INTO accounts (name, password_hash, quota_bytes, quota_messages) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (name) DO NOTHING RETURNING id",
                name,
                password_hash,
                quota_bytes,
                quota_messages,
            )
            if account_id is None:
                raise AlreadyExists(name)
            await _insert_mailboxes(conn, account_id, list(wanted), list(wanted.values()))
            account = await _account_by_name(conn, name)
            assert account is not None
            return account

        return await self._write(txn)

    async def get_account(self, name: str) -> AccountRecord | None:
        return await self._read(lambda conn: _account_by_name(conn, name.lower()))

    async def list_accounts(self) -> list[AccountRecord]:
        rows = await self._read(lambda conn: conn.fetch(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name"))
        return [AccountRecord(*r) for r in rows]

    async def set_password(self, name: str, password_hash: str) -> None:
        name = name.lower()

        async def txn(conn: Conn) -> None:
            if await conn.fetchval("UPDATE accounts SET password_hash = $2 WHERE name = $1 RETURNING id", name,
                                   password_hash) is None:  # fmt: skip
                raise AccountNotFound(name)

        await self._write(txn)

    async def set_quota(self, name: str, quota_bytes: int, quota_messages: int) -> AccountRecord:
        name = name.lower()

        async def txn(conn: Conn) -> AccountRecord:
            row = await conn.fetchrow(
                "UPDATE accounts SET quota_bytes = $2, quota_messages = $3 WHERE name = $1"
                f" RETURNING {_ACCOUNT_COLUMNS}",
                name,
                quota_bytes,
                quota_messages,
            )
            if row is None:
                raise AccountNotFound(name)
            return AccountRecord(*row)

        return await self._write(txn)

    async def delete_account(self, name: str) -> list[str]:
        name = name.lower()

        async def txn(conn: Conn) -> list[str]:
            account_id = await _account_id(conn, name)
            ids = [r[0] for r in await conn.fetch("SELECT id FROM mailboxes WHERE account_id = $1", account_id)]
            await _lock(conn, ids)  # the lock order of every other write: mailboxes, then the account
            keys = [
                r[0]
                for r in await conn.fetch(
                    "SELECT blob_key FROM messages WHERE mailbox_id = ANY($1::bigint[])", sorted(ids)
                )
            ]
            freed = await release_blobs(conn, keys)
            # Cascades to aliases, subscriptions, mailboxes, their messages and change log.
            await conn.execute("DELETE FROM accounts WHERE id = $1", account_id)
            return freed

        return await self._write(txn)

    # ---- domains and aliases

    async def add_domain(self, name: str) -> None:
        name = name.lower()

        async def txn(conn: Conn) -> None:
            if await conn.fetchval("INSERT INTO domains (name) VALUES ($1) ON CONFLICT DO NOTHING RETURNING name",
                                   name) is None:  # fmt: skip
                raise AlreadyExists(name)

        await self._write(txn)

    async def delete_domain(self, name: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM domains WHERE name = $1", name.lower()))

    async def list_domains(self) -> list[str]:
        rows = await self._read(lambda conn: conn.fetch("SELECT name FROM domains ORDER BY name"))
        return [r[0] for r in rows]

    async def add_alias(self, address: str, account: str) -> None:
        address, account = address.lower(), account.lower()

        async def txn(conn: Conn) -> None:
            account_id = await _account_id(conn, account)
            # An alias equal to an account name could never resolve (accounts win), so refuse it.
            if await conn.fetchval("SELECT 1 FROM accounts WHERE name = $1", address):
                raise AlreadyExists(address)
            await conn.execute("INSERT INTO aliases (address, account_id) VALUES ($1, $2)", address, account_id)

        await self._write(txn)

    async def delete_alias(self, address: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM aliases WHERE address = $1", address.lower()))

    async def list_aliases(self, account: str | None = None) -> list[tuple[str, str]]:
        sql = "SELECT al.address, ac.name FROM aliases al JOIN accounts ac ON ac.id = al.account_id"
        params: list[str] = []
        if account is not None:
            sql += " WHERE ac.name = $1"
            params = [account.lower()]
        rows = await self._read(lambda conn: conn.fetch(sql + " ORDER BY al.address", *params))
        return [(r[0], r[1]) for r in rows]

    async def resolve_address(self, address: str) -> AccountRecord | None:
        return await self._read(lambda conn: _resolve_address(conn, address.lower()))

    async def set_forward(self, forward: ForwardRecord) -> None:
        address = forward.address.lower()

        async def txn(conn: Conn) -> None:
            await conn.execute("DELETE FROM forwards WHERE address = $1", address)
            if forward.targets:
                await conn.execute(
                    "INSERT INTO forwards (address, targets, keep_copy) VALUES ($1, $2, $3)",
                    address, "\n".join(forward.targets), forward.keep_copy,
                )  # fmt: skip

        await self._write(txn)

    async def list_forwards(self) -> list[ForwardRecord]:
        sql = "SELECT address, targets, keep_copy FROM forwards ORDER BY address"
        return [_forward(r) for r in await self._read(lambda conn: conn.fetch(sql))]

    async def forwards_for(self, addresses: Sequence[str]) -> dict[str, ForwardRecord]:
        wanted = sorted({a.lower() for a in addresses})
        if not wanted:
            return {}
        # Only of addresses that are still an account or alias: a stale row stays inert.
        sql = "SELECT address, targets, keep_copy FROM forwards f WHERE address = ANY($1::text[])" + LIVE_FORWARD
        rows = await self._read(lambda conn: conn.fetch(sql, wanted))
        return {r[0]: _forward(r) for r in rows}

    async def resolve_delivery(self, addresses: Sequence[str], mailbox_name: str) -> list[DeliveryTarget | None]:
        wanted = _mailbox_name(mailbox_name)

        async def txn(conn: Conn) -> list[DeliveryTarget | None]:
            out: list[DeliveryTarget | None] = []
            for address in addresses:
                account = await _resolve_address(conn, address.lower())
                if account is None:
                    out.append(None)
                    continue
                mailbox = await _find_mailbox(conn, account.id, wanted) or await _find_mailbox(conn, account.id, INBOX)
                if mailbox is None:
                    raise MailboxNotFound(INBOX)
                out.append(DeliveryTarget(account, mailbox))
            return out

        return await self._read(txn, snapshot=len(addresses) > 1)

    # ---- mailboxes

    async def list_mailboxes(self, account_id: int) -> list[MailboxRecord]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.account_id = $1"
                " ORDER BY m.name <> 'INBOX', m.name",
                account_id,
            )
        )
        return [_mailbox_record(r) for r in rows]

    async def get_mailbox(self, account_id: int, name: str) -> MailboxRecord:
        name = _mailbox_name(name)
        record = await self._read(lambda conn: _find_mailbox(conn, account_id, name))
        if record is None:
            raise MailboxNotFound(name)
        return record

    async def create_mailbox(self, account_id: int, name: str, special_use: str = "") -> MailboxRecord:
        name = _mailbox_name(name)

        async def txn(conn: Conn) -> MailboxRecord:
            if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id) is None:
                raise AccountNotFound(str(account_id))
            await _insert_mailboxes(conn, account_id, [name], [special_use])  # a taken name: AlreadyExists
            record = await _find_mailbox(conn, account_id, name)
            assert record is not None
            return record

        return await self._write(txn)

    async def adopt_uids(self, mailbox_id: int, uidvalidity: int, uidnext: int) -> MailboxRecord:
        async def txn(conn: Conn) -> MailboxRecord:
            mailbox = (await _lock(conn, [mailbox_id], accounts=False)).mailbox(mailbox_id)
            adopted = bool(await conn.fetchval("SELECT adopted FROM mailboxes WHERE id = $1", mailbox_id))
            check_adoption(uidvalidity, mailbox.uidvalidity, mailbox.highestmodseq, adopted)
            if uidvalidity:
                await conn.execute(
                    "UPDATE mailboxes SET uidvalidity = $2, adopted = TRUE WHERE id = $1", mailbox_id, uidvalidity
                )
                await conn.execute(
                    "SELECT setval('uidvalidity_seq', GREATEST((SELECT last_value FROM uidvalidity_seq), $1::bigint))",
                    uidvalidity,
                )
            await conn.execute(
                "UPDATE mailboxes SET uidnext = GREATEST(uidnext, $2::bigint) WHERE id = $1", mailbox_id, uidnext
            )
            row = await conn.fetchrow(f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.id = $1", mailbox_id)
            return _mailbox_record(row)

        return await self._write(txn)

    async def delete_mailbox(self, account_id: int, name: str) -> ExpungeResult:
        name = _mailbox_name(name)
        if name == INBOX:
            raise NotAllowed("INBOX cannot be deleted")

        async def txn(conn: Conn) -> ExpungeResult:
            mailbox_id = await conn.fetchval(
                "SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2", account_id, name
            )
            locked = await _lock(conn, [mailbox_id] if mailbox_id is not None else [])
            if mailbox_id not in locked.mailboxes:  # absent, or deleted while we waited for its lock
                raise MailboxNotFound(name)
            result = await _expunge(conn, locked, mailbox_id, only_deleted=False, uids=None)
            # Cascades to the change log; subscriptions are by name and stay (RFC 3501 §6.3.6).
            await conn.execute("DELETE FROM mailboxes WHERE id = $1", mailbox_id)
            return result

        return await self._write(txn)

    async def rename_mailbox(self, account_id: int, name: str, new_name: str) -> None:
        name, new_name = _mailbox_name(name), _mailbox_name(new_name)

        async def txn(conn: Conn) -> None:
            if name == INBOX:
                await self._rename_inbox(conn, account_id, new_name)
                return
            family = await conn.fetch(
                "SELECT id, name FROM mailboxes WHERE account_id = $1 AND (name = $2 OR starts_with(name, $3))"
                " ORDER BY id FOR UPDATE",
                account_id,
                name,
                name + "/",
            )
            if not any(old == name for _, old in family):
                raise MailboxNotFound(name)
            renames = [(mailbox_id, new_name + old[len(name) :]) for mailbox_id, old in family]
            taken = {
                r[0]
                for r in await conn.fetch(
                    "SELECT name FROM mailboxes WHERE account_id = $1 AND name = ANY($2::text[])",
                    account_id,
                    [new_name] + [target for _, target in renames],
                )
            }
            if new_name in taken:
                raise AlreadyExists(new_name)
            if new_name.startswith(name + "/"):
                raise NotAllowed(f"cannot rename {name!r} into its own child {new_name!r}")
            if taken:
                raise AlreadyExists(min(taken))
            await conn.execute(
                "UPDATE mailboxes m SET name = t.name FROM unnest($1::bigint[], $2::text[]) AS t(id, name)"
                " WHERE m.id = t.id",
                [i for i, _ in renames],
                [t for _, t in renames],
            )

        await self._write(txn)

    @staticmethod
    async def _rename_inbox(conn: Conn, account_id: int, new_name: str) -> None:
        # RFC 3501 §6.3.5: move INBOX's messages to a new mailbox, INBOX stays (empty); its children stay.
        source = await _find_mailbox(conn, account_id, INBOX)
        if source is None:
            raise MailboxNotFound(INBOX)
        await _insert_mailboxes(conn, account_id, [new_name], [""])  # a taken name: AlreadyExists
        target = await _find_mailbox(conn, account_id, new_name)
        assert target is not None
        locked = await _lock(conn, [source.id, target.id], accounts=False)
        uids = [
            r[0] for r in await conn.fetch("SELECT uid FROM messages WHERE mailbox_id = $1 ORDER BY uid", source.id)
        ]
        if uids:
            await _copy_rows(conn, source.id, uids, locked.mailbox(target.id))
            await _remove_messages(conn, source.id, uids, await _bump_modseq(conn, locked.mailbox(source.id)))

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        name = _mailbox_name(name)

        async def txn(conn: Conn) -> None:
            if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id) is None:
                raise AccountNotFound(str(account_id))
            if subscribed:
                await conn.execute(
                    "INSERT INTO subscriptions (account_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    account_id,
                    name,
                )
            else:
                await conn.execute("DELETE FROM subscriptions WHERE account_id = $1 AND name = $2", account_id, name)

        await self._write(txn)

    async def list_subscriptions(self, account_id: int) -> list[str]:
        rows = await self._read(
            lambda conn: conn.fetch("SELECT name FROM subscriptions WHERE account_id = $1 ORDER BY name", account_id)
        )
        return [r[0] for r in rows]

    async def mailbox_counts(self, mailbox_id: int) -> MailboxCounts:
        row = await self._read(
            lambda conn: conn.fetchrow(
                "SELECT b.id, COUNT(m.uid), COALESCE(SUM(m.size), 0)::bigint,"
                f" COUNT(m.uid) FILTER (WHERE NOT {_SEEN}), COUNT(m.uid) FILTER (WHERE {_DELETED}),"
                " COUNT(m.uid) FILTER (WHERE m.uid >= b.recent_floor),"
                f" COALESCE(MIN(m.uid) FILTER (WHERE NOT {_SEEN}), 0)"
                " FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id WHERE b.id = $1 GROUP BY b.id",
                mailbox_id,
            )
        )
        if row is None:
            raise MailboxNotFound(str(mailbox_id))
        return MailboxCounts(
            messages=row[1], size=row[2], unseen=row[3], deleted=row[4], recent=row[5], first_unseen_uid=row[6]
        )

    async def claim_recent(self, mailbox_id: int) -> tuple[int, int]:
        async def txn(conn: Conn) -> tuple[int, int]:
            mailbox = (await _lock(conn, [mailbox_id], accounts=False)).mailbox(mailbox_id)
            await conn.execute("UPDATE mailboxes SET recent_floor = uidnext WHERE id = $1", mailbox_id)
            return mailbox.recent_floor, mailbox.uidnext

        return await self._write(txn)

    # ---- messages

    async def insert_message(self, mailbox_id: int, message: NewMessage, enforce_quota: bool) -> InsertResult:
        _no_body(message)
        return await self._write(
            lambda conn: _insert_message(conn, mailbox_id, message, enforce_quota), transaction=False
        )

    async def deliver(
        self, mailbox_ids: Sequence[int], message: NewMessage, enforce_quota: bool
    ) -> list[InsertResult | OverQuota | MailboxNotFound]:
        _no_body(message)

        async def one(conn: Conn, mailbox_id: int) -> InsertResult | OverQuota | MailboxNotFound:
            # A refused target writes nothing (one statement), so no savepoint is needed.
            try:
                return await _insert_message(conn, mailbox_id, message, enforce_quota)
            except (OverQuota, MailboxNotFound) as exc:
                return exc

        async def txn(conn: Conn) -> list[InsertResult | OverQuota | MailboxNotFound]:
            done: dict[int, InsertResult | OverQuota | MailboxNotFound] = {}
            # In mailbox id order (fewer lock cycles between deliveries), answered in the caller's order.
            for index in sorted(range(len(mailbox_ids)), key=lambda i: mailbox_ids[i]):
                done[index] = await one(conn, mailbox_ids[index])
            return [done[index] for index in range(len(mailbox_ids))]

        if len(mailbox_ids) == 1:
            return await self._write(lambda conn: _single(one(conn, mailbox_ids[0])), transaction=False)
        return await self._write(txn)

    async def fetch(
        self, mailbox_id: int, uids: UidRanges | None = None, changed_since: int = 0, with_header: bool = False
    ) -> list[MessageRecord]:
        header = "m.header" if with_header else "''::bytea"
        columns = (
            ", ".join(f"m.{c.strip()}" for c in _MESSAGE_COLUMNS.split(","))
            + f", {header}, m.sent_date, m.save_date, m.pop3_uidl"
        )

        async def txn(conn: Conn) -> list[MessageRecord]:
            # One statement for IMAP's hottest read: the mailbox row LEFT JOIN its messages in the ranges,
            # so that "no such mailbox" (no row) and "no such messages" (one row of NULLs) differ.
            params: list[Any] = [mailbox_id, changed_since]
            messages = "messages m ON m.mailbox_id = b.id AND m.modseq > $2"
            if uids is not None:
                merged = await _ranges(conn, mailbox_id, uids)
                params += [[lo for lo, _ in merged], [hi for _, hi in merged]]
                messages = (
                    "(messages m JOIN unnest($3::bigint[], $4::bigint[]) AS r(lo, hi)"
                    " ON m.mailbox_id = $1 AND m.uid BETWEEN r.lo AND r.hi AND m.modseq > $2) ON true"
                )
            rows = await conn.fetch(
                f"SELECT {columns} FROM mailboxes b LEFT JOIN {messages} WHERE b.id = $1 ORDER BY m.uid", *params
            )
            if not rows:
                raise MailboxNotFound(str(mailbox_id))
            return [_message(r) for r in rows if r[0] is not None]

        # "*" costs a read of the highest UID first: then both statements share one snapshot.
        star = uids is not None and any(first == 0 or last == 0 for first, last in uids)
        return await self._read(txn, snapshot=star)

    async def store_flags(
        self, mailbox_id: int, uids: UidRanges, mode: StoreMode, flags: Sequence[str], unchanged_since: int | None
    ) -> tuple[list[FlagUpdate], list[int]]:
        wanted = canonical_flags(flags)

        async def txn(conn: Conn) -> tuple[list[FlagUpdate], list[int]]:
            mailbox = (await _lock(conn, [mailbox_id], accounts=False)).mailbox(mailbox_id)
            changed: list[tuple[int, frozenset[str]]] = []
            failed: list[int] = []
            for uid, modseq, text in await _select(conn, mailbox_id, uids, "uid, modseq, flags"):
                # RFC 7162 §3.1.3: UNCHANGEDSINCE fails messages modified after it.
                if unchanged_since is not None and modseq > unchanged_since:
                    failed.append(uid)
                    continue
                current = frozenset(text.split())
                new = apply_mode(current, mode, wanted)
                if new != current:
                    changed.append((uid, new))
            if not changed:
                return [], failed
            # Messages changed together share one MODSEQ (RFC 7162 §3.1.3 allows it).
            modseq = await _bump_modseq(conn, mailbox)
            await conn.execute(
                "UPDATE messages m SET flags = t.flags, modseq = $2"
                " FROM unnest($3::bigint[], $4::text[]) AS t(uid, flags) WHERE m.mailbox_id = $1 AND m.uid = t.uid",
                mailbox_id,
                modseq,
                [uid for uid, _ in changed],
                [flags_text(new) for _, new in changed],
            )
            return [FlagUpdate(uid, modseq, tuple(sorted(new))) for uid, new in changed], failed

        return await self._write(txn)

    async def copy(
        self, mailbox_id: int, uids: UidRanges, destination_id: int, move: bool, enforce_quota: bool
    ) -> CopyResult:
        async def txn(conn: Conn) -> CopyResult:
            locked = await _lock(conn, [mailbox_id, destination_id])
            source, destination = locked.mailbox(mailbox_id), locked.mailbox(destination_id)
            rows = await _select(conn, mailbox_id, uids, "uid, size, blob_key")
            if not rows:
                return CopyResult(destination.uidvalidity, (), destination.highestmodseq, (), 0)
            size = sum(r[1] for r in rows)
            same_account = source.account_id == destination.account_id
            if enforce_quota and not (move and same_account):
                locked.usage[destination.account_id].check(destination.account_id, size, len(rows))
            source_uids = [r[0] for r in rows]
            mapping, destination_modseq = await _copy_rows(conn, mailbox_id, source_uids, destination)
            source_modseq = 0
            if move:
                # RFC 6851 §3.3: the source sees the moved messages expunged.
                source_modseq = await _bump_modseq(conn, source)
                await _remove_messages(conn, mailbox_id, source_uids, source_modseq)
                if not same_account:
                    await _add_usage(conn, locked, source.account_id, -size, -len(rows))
                    await _add_usage(conn, locked, destination.account_id, size, len(rows))
            else:
                await reference_blobs(conn, [r[2] for r in rows])
                await _add_usage(conn, locked, destination.account_id, size, len(rows))
            return CopyResult(
                uidvalidity=destination.uidvalidity,
                mapping=tuple(mapping),
                destination_modseq=destination_modseq,
                expunged=tuple(source_uids) if move else (),
                source_modseq=source_modseq,
            )

        return await self._write(txn)

    async def expunge(self, mailbox_id: int, uids: UidRanges | None) -> ExpungeResult:
        async def txn(conn: Conn) -> ExpungeResult:
            return await _expunge(conn, await _lock(conn, [mailbox_id]), mailbox_id, True, uids)

        return await self._write(txn)

    async def changes_since(self, mailbox_id: int, modseq: int) -> list[ChangeRecord]:
        async def txn(conn: Conn) -> list[ChangeRecord]:
            if await conn.fetchval("SELECT 1 FROM mailboxes WHERE id = $1", mailbox_id) is None:
                raise MailboxNotFound(str(mailbox_id))
            changes = [
                ChangeRecord(uid, m, "new" if created > modseq else "flags", flags_tuple(text))
                for uid, m, created, text in await conn.fetch(
                    "SELECT uid, modseq, created_modseq, flags FROM messages WHERE mailbox_id = $1 AND modseq > $2",
                    mailbox_id,
                    modseq,
                )
            ]
            changes += [
                ChangeRecord(uid, m, "expunge", ())
                for uid, m in await conn.fetch(
                    "SELECT uid, modseq FROM changes WHERE mailbox_id = $1 AND modseq > $2 AND kind = 'expunge'",
                    mailbox_id,
                    modseq,
                )
            ]
            changes.sort(key=lambda c: (c.modseq, c.uid))
            return changes

        return await self._read(txn, snapshot=True)

    async def pruned_modseq(self, mailbox_id: int) -> int:
        value = await self._read(
            lambda conn: conn.fetchval("SELECT pruned_modseq FROM mailboxes WHERE id = $1", mailbox_id)
        )
        if value is None:
            raise MailboxNotFound(str(mailbox_id))
        return int(value)

    async def prune_changes(self, before: float) -> int:
        async def txn(conn: Conn) -> int:
            # Each mailbox remembers the newest MODSEQ it forgets: a client older than that gets
            # VANISHED (EARLIER) for every UID it may hold that is not there (RFC 7162 §3.2.5.2).
            tops = await conn.fetch(
                "SELECT mailbox_id, MAX(modseq) FROM changes WHERE at < $1 GROUP BY mailbox_id", before
            )
            if not tops:
                return 0
            await _lock(conn, [r[0] for r in tops], accounts=False)
            await conn.execute(
                "UPDATE mailboxes m SET pruned_modseq = GREATEST(m.pruned_modseq, t.top)"
                " FROM unnest($1::bigint[], $2::bigint[]) AS t(id, top) WHERE m.id = t.id",
                [r[0] for r in tops],
                [r[1] for r in tops],
            )
            return int(await conn.fetchval("WITH gone AS (DELETE FROM changes WHERE at < $1 RETURNING 1)"
                                            " SELECT COUNT(*) FROM gone", before))  # fmt: skip

        return await self._write(txn)

    # ---- quota and blobs

    async def recompute_usage(self, account_id: int) -> tuple[int, int]:
        async def txn(conn: Conn) -> tuple[int, int]:
            ids = [r[0] for r in await conn.fetch("SELECT id FROM mailboxes WHERE account_id = $1", account_id)]
            await _lock(conn, ids)  # no delivery to this account commits between the sum and the write
            row = await conn.fetchrow(
                "UPDATE accounts a SET used_bytes = s.bytes, used_messages = s.messages FROM"
                " (SELECT COALESCE(SUM(size), 0)::bigint AS bytes, COUNT(*) AS messages FROM messages"
                "  WHERE mailbox_id = ANY($2::bigint[])) s"
                " WHERE a.id = $1 RETURNING a.used_bytes, a.used_messages",
                account_id,
                ids,
            )
            if row is None:
                raise AccountNotFound(str(account_id))
            return int(row[0]), int(row[1])

        return await self._write(txn)

    async def blob_referenced(self, key: str) -> bool:
        count = await self._read(lambda conn: conn.fetchval("SELECT refcount FROM blobs WHERE key = $1", key))
        return count is not None and count > 0

    async def kept_body(self, key: str) -> bytes | None:
        return None

    async def body_references(self, account_id: int | None = None) -> list[BodyReference]:
        sql = (
            "SELECT a.name, b.id, b.name, b.uidvalidity, m.uid, m.blob_key, m.size FROM messages m"
            " JOIN mailboxes b ON b.id = m.mailbox_id JOIN accounts a ON a.id = b.account_id"
        )
        params: list[int] = []
        if account_id is not None:
            sql += " WHERE a.id = $1"
            params = [account_id]
        rows = await self._read(lambda conn: conn.fetch(sql + " ORDER BY a.name, b.name, m.uid", *params))
        return [BodyReference(*r) for r in rows]

    async def remove_messages(self, mailbox_id: int, uids: Sequence[int]) -> ExpungeResult:
        ranges = [(u, u) for u in uids]

        async def txn(conn: Conn) -> ExpungeResult:
            return await _expunge(conn, await _lock(conn, [mailbox_id]), mailbox_id, False, ranges)

        return await self._write(txn)

    # ---- leases

    async def acquire_lease(self, name: str, holder: str, ttl_seconds: int) -> tuple[bool, str]:
        async def txn(conn: Conn) -> tuple[bool, str]:
            # Taken when free, expired or already ours; the row lock of ON CONFLICT decides races.
            got = await conn.fetchval(
                f"INSERT INTO leases (name, holder, expires) VALUES ($1, $2, {_NOW} + $3::float8)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires"
                f" WHERE leases.holder = excluded.holder OR leases.expires <= {_NOW}"
                " RETURNING holder",
                name,
                holder,
                float(ttl_seconds),
            )
            if got is not None:
                return True, holder
            current = await conn.fetchval("SELECT holder FROM leases WHERE name = $1", name)
            if current is None:  # released between the two statements: try again
                raise _Conflict("lease released meanwhile")
            return False, str(current)

        return await self._write(txn)

    async def release_lease(self, name: str, holder: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM leases WHERE name = $1 AND holder = $2", name, holder))

    # ---- failed logins (ADR 0046): dated by the database's clock, one for every replica

    async def auth_failures(self, ip: str, account: str, window: float) -> tuple[int, int, int]:
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"WITH recent AS (SELECT ip, account FROM auth_failures WHERE at > {_NOW} - $3::float8"
                " AND (ip = $1 OR account = $2))"
                " SELECT (SELECT COUNT(*) FROM recent WHERE ip = $1),"
                " (SELECT COUNT(*) FROM recent WHERE account = $2 AND account <> ''),"
                " (SELECT COUNT(*) FROM recent WHERE ip = $1 AND account = $2 AND account <> '')",
                ip,
                account,
                float(window),
            )
        )
        return int(row[0]), int(row[1]), int(row[2])

    async def record_auth_failure(self, ip: str, account: str, window: float) -> None:
        async def txn(conn: Conn) -> None:
            await conn.execute(f"DELETE FROM auth_failures WHERE at <= {_NOW} - $1::float8", float(window))
            await conn.execute(f"INSERT INTO auth_failures (ip, account, at) VALUES ($1, $2, {_NOW})", ip, account)

        await self._write(txn)

    async def forget_auth_failures(self, ip: str, account: str) -> None:
        await self._write(
            lambda conn: conn.execute("DELETE FROM auth_failures WHERE ip = $1 AND account = $2", ip, account)
        )


if TYPE_CHECKING:
    # mypy checks here that the class satisfies the Protocol.
    _conforms: MetadataStore = PostgresMetadataStore("")


def _forward(row: Any) -> ForwardRecord:
    return ForwardRecord(str(row[0]), tuple(str(row[1]).split("\n")), bool(row[2]))
