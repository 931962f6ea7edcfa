"""The outbound queue and API tokens in the SQLite metadata database (ADR 0007).

A sibling of SqliteMetadataStore on the same file and the same writer thread: it runs its
transactions through the store's `_write`/`_read`, so queue writes share group commit with
deliveries and a queued message's blob reference lives in the same `blobs` table the orphan
sweeper consults. The tables come from migration step 2 in sqlite_schema.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mailstack.storage.errors import AlreadyExists, NotAllowed, NotFound
from mailstack.storage.metadata.sqlite import SqliteMetadataStore, _one, _reference_blobs, _release_blobs, _rows
from mailstack.storage.queue.base import (
    PENDING,
    EnqueueResult,
    LeasedOutbound,
    NewOutbound,
    OutboundStatus,
    QueueStore,
    RecipientOutcome,
    RecipientStatus,
    ReportResult,
    TokenRecord,
    TokenStore,
)

_PENDING_SQL = "('queued', 'deferred')"
_RECIPIENT_COLUMNS = "recipient, local, state, attempts, last_error, remote_mta, next_attempt, updated"


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()


def _recipient(row: Any) -> RecipientStatus:
    address, local, state, attempts, last_error, remote_mta, next_attempt, updated = row
    return RecipientStatus(address, bool(local), state, attempts, last_error, remote_mta, next_attempt, updated)


def _recipients(conn: sqlite3.Connection, message_id: str, where: str = "") -> list[RecipientStatus]:
    rows = _rows(
        conn,
        f"SELECT {_RECIPIENT_COLUMNS} FROM outbound_recipients WHERE message_id = ? {where} ORDER BY position",
        (message_id,),
    )
    return [_recipient(r) for r in rows]


def _settle(conn: sqlite3.Connection, message_id: str, newly_bounced: list[RecipientStatus]) -> ReportResult:
    """After recipients changed: end the lease, schedule the next attempt or finish the message."""
    pending = _one(
        conn,
        f"SELECT COUNT(*), MIN(next_attempt) FROM outbound_recipients WHERE message_id = ? AND state IN {_PENDING_SQL}",
        (message_id,),
    )
    if pending[0]:
        conn.execute(
            "UPDATE outbound_messages SET lease_holder = '', lease_expires = 0, next_attempt = ? WHERE id = ?",
            (pending[1], message_id),
        )
        return ReportResult(False, newly_bounced, [])
    row = _one(
        conn,
        "UPDATE outbound_messages SET lease_holder = '', lease_expires = 0, done = 1 WHERE id = ? AND done = 0"
        " RETURNING blob_key",
        (message_id,),
    )
    freed = _release_blobs(conn, [row[0]]) if row and row[0] else []
    return ReportResult(True, newly_bounced, freed)


class SqliteQueueStore:
    def __init__(self, metadata: SqliteMetadataStore) -> None:
        self._db = metadata

    # ---- queue

    async def enqueue(self, item: NewOutbound, now: float) -> EnqueueResult:
        def txn(conn: sqlite3.Connection) -> EnqueueResult:
            if item.idempotency_key:
                row = _one(
                    conn,
                    "SELECT id FROM outbound_messages WHERE client = ? AND idempotency_key = ?",
                    (item.client, item.idempotency_key),
                )
                if row is not None:
                    return EnqueueResult(str(row[0]), duplicate=True)
            pending = any(r.state in PENDING for r in item.recipients)
            conn.execute(
                "INSERT INTO outbound_messages (id, sender, blob_key, size, created, client, idempotency_key,"
                " message_id_header, original_headers, next_attempt, done) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.id,
                    item.sender,
                    item.blob_key if pending else "",
                    item.size,
                    now,
                    item.client,
                    item.idempotency_key,
                    item.message_id_header,
                    item.original_headers,
                    now,
                    0 if pending else 1,
                ),
            )
            conn.executemany(
                "INSERT INTO outbound_recipients (message_id, position, recipient, domain, local, state, last_error,"
                " next_attempt, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (item.id, i, r.address, _domain(r.address), int(r.local), r.state, r.error, now, now)
                    for i, r in enumerate(item.recipients)
                ],
            )
            if pending:
                _reference_blobs(conn, [item.blob_key])
            return EnqueueResult(item.id, duplicate=False)

        return await self._db._write(txn)

    async def find_idempotent(self, client: str, idempotency_key: str) -> str | None:
        row = await self._db._read(
            lambda conn: _one(
                conn,
                "SELECT id FROM outbound_messages WHERE client = ? AND idempotency_key = ?",
                (client, idempotency_key),
            )
        )
        return str(row[0]) if row else None

    async def lease_next(self, worker: str, ttl: float, now: float, limit: int) -> list[LeasedOutbound]:
        def txn(conn: sqlite3.Connection) -> list[LeasedOutbound]:
            # One UPDATE picks and leases: two workers can never hold the same message.
            leased = _rows(
                conn,
                "UPDATE outbound_messages SET lease_holder = ?, lease_expires = ?, attempts = attempts + 1"
                " WHERE id IN (SELECT id FROM outbound_messages WHERE done = 0 AND next_attempt <= ?"
                " AND lease_expires <= ? ORDER BY next_attempt LIMIT ?)"
                " RETURNING id, sender, blob_key, size, attempts",
                (worker, now + ttl, now, now, limit),
            )
            out = []
            for message_id, sender, blob_key, size, attempts in leased:
                by_domain: dict[str, list[str]] = {}
                for r in _recipients(conn, message_id, f"AND state IN {_PENDING_SQL}"):
                    by_domain.setdefault(_domain(r.address), []).append(r.address)
                out.append(LeasedOutbound(message_id, sender, blob_key, size, attempts, by_domain))
            return out

        return await self._db._write(txn)

    async def report(
        self, message_id: str, worker: str, outcomes: Sequence[RecipientOutcome], now: float
    ) -> ReportResult:
        def txn(conn: sqlite3.Connection) -> ReportResult:
            row = _one(conn, "SELECT lease_holder, done FROM outbound_messages WHERE id = ?",
                       (message_id,))  # fmt: skip
            if row is None:
                raise NotFound(f"no queued message {message_id}")
            holder, done = row
            # A report after the lease expired is still taken while nobody else leased the message:
            # the delivery happened, and forgetting it would only cause a duplicate.
            if done or holder != worker:
                raise NotAllowed(f"message {message_id} is not leased by {worker}")
            bounced: list[RecipientStatus] = []
            for outcome in outcomes:
                updated = _rows(
                    conn,
                    "UPDATE outbound_recipients SET state = ?, attempts = attempts + 1, last_error = ?,"
                    " remote_mta = ?, next_attempt = ?, updated = ?"
                    f" WHERE message_id = ? AND recipient = ? AND state IN {_PENDING_SQL}"
                    f" RETURNING {_RECIPIENT_COLUMNS}",
                    (outcome.state, outcome.error, outcome.remote_mta, outcome.next_attempt, now, message_id,
                     outcome.address),
                )  # fmt: skip
                if outcome.state == "bounced":
                    bounced += [_recipient(r) for r in updated]
            return _settle(conn, message_id, bounced)

        return await self._db._write(txn)

    async def leased_blob(self, message_id: str, worker: str) -> str:
        row = await self._db._read(
            lambda conn: _one(
                conn,
                "SELECT blob_key FROM outbound_messages WHERE id = ? AND lease_holder = ? AND done = 0",
                (message_id, worker),
            )
        )
        if row is None:
            raise NotAllowed(f"message {message_id} is not leased by {worker}")
        return str(row[0])

    async def status(self, message_id: str) -> OutboundStatus | None:
        def txn(conn: sqlite3.Connection) -> OutboundStatus | None:
            row = _one(
                conn,
                "SELECT id, sender, created, message_id_header, original_headers, done FROM outbound_messages"
                " WHERE id = ?",
                (message_id,),
            )
            if row is None:
                return None
            return OutboundStatus(row[0], row[1], row[2], row[3], bytes(row[4]), bool(row[5]),
                                  _recipients(conn, message_id))  # fmt: skip

        return await self._db._read(txn)

    async def expire(self, created_before: float, now: float) -> list[tuple[str, ReportResult]]:
        def txn(conn: sqlite3.Connection) -> list[tuple[str, ReportResult]]:
            ids = [
                r[0]
                for r in _rows(
                    conn,
                    "SELECT id FROM outbound_messages WHERE done = 0 AND created < ? AND lease_expires <= ?",
                    (created_before, now),
                )
            ]
            out = []
            for message_id in ids:
                bounced = _rows(
                    conn,
                    "UPDATE outbound_recipients SET state = 'bounced', updated = ?,"
                    " last_error = CASE WHEN last_error = '' THEN 'delivery time expired'"
                    " ELSE 'delivery time expired; last error: ' || last_error END"
                    f" WHERE message_id = ? AND state IN {_PENDING_SQL} RETURNING {_RECIPIENT_COLUMNS}",
                    (now, message_id),
                )
                out.append((message_id, _settle(conn, message_id, [_recipient(r) for r in bounced])))
            return out

        return await self._db._write(txn)

    async def queue_depth(self) -> int:
        row = await self._db._read(lambda conn: _one(conn, "SELECT COUNT(*) FROM outbound_messages WHERE done = 0"))
        return int(row[0])

    async def oldest_pending(self) -> float | None:
        row = await self._db._read(lambda conn: _one(conn, "SELECT MIN(created) FROM outbound_messages WHERE done = 0"))
        return None if row is None or row[0] is None else float(row[0])

    # ---- tokens

    async def create_token(self, record: TokenRecord, token_hash: str) -> None:
        def txn(conn: sqlite3.Connection) -> None:
            if _one(conn, "SELECT 1 FROM api_tokens WHERE name = ?", (record.name,)) is not None:
                raise AlreadyExists(f"token {record.name} exists")
            conn.execute(
                "INSERT INTO api_tokens (name, token_hash, from_domains, from_addresses, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (record.name, token_hash, " ".join(record.from_domains), " ".join(record.from_addresses),
                 record.created),
            )  # fmt: skip

        await self._db._write(txn)

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        row = await self._db._read(
            lambda conn: _one(
                conn,
                "SELECT name, from_domains, from_addresses, created FROM api_tokens WHERE token_hash = ?",
                (token_hash,),
            )
        )
        return _token(row) if row else None

    async def list_tokens(self) -> list[TokenRecord]:
        rows = await self._db._read(
            lambda conn: _rows(conn, "SELECT name, from_domains, from_addresses, created FROM api_tokens ORDER BY name")
        )
        return [_token(r) for r in rows]

    async def revoke_token(self, name: str) -> None:
        def txn(conn: sqlite3.Connection) -> None:
            if not _rows(conn, "DELETE FROM api_tokens WHERE name = ? RETURNING name", (name,)):
                raise NotFound(f"no token {name}")

        await self._db._write(txn)


def _token(row: Any) -> TokenRecord:
    return TokenRecord(row[0], tuple(row[1].split()), tuple(row[2].split()), row[3])


if TYPE_CHECKING:
    _queue: QueueStore = SqliteQueueStore(SqliteMetadataStore(""))
    _tokens: TokenStore = SqliteQueueStore(SqliteMetadataStore(""))
