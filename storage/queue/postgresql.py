"""The outbound queue and API tokens in the PostgreSQL metadata database (ADR 0008, 0027).

A sibling of PostgresMetadataStore on the same database: it runs its transactions through the
store's public `run_write`/`run_read` (same pool, retries and error mapping), and a queued
message's blob reference lives in the same `blobs` table the orphan sweeper consults. The tables
come from step 1 in postgresql_schema.py.
Several mailstore replicas lease from one queue: `lease_next` picks due rows FOR UPDATE SKIP LOCKED,
so concurrent pollers never wait on each other and never lease one message twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mailstack.storage.errors import AlreadyExists, NotAllowed, NotFound
from mailstack.storage.metadata.postgresql import Conn, PostgresMetadataStore, reference_blobs, release_blobs
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
_TOKEN_COLUMNS = "name, from_domains, from_addresses, created"


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()


def _recipient(row: Any) -> RecipientStatus:
    address, local, state, attempts, last_error, remote_mta, next_attempt, updated = row
    return RecipientStatus(address, bool(local), state, attempts, last_error, remote_mta, next_attempt, updated)


def _token(row: Any) -> TokenRecord:
    return TokenRecord(row[0], tuple(row[1].split()), tuple(row[2].split()), row[3])


async def _recipients(conn: Conn, message_id: str, pending_only: bool = False) -> list[RecipientStatus]:
    where = f" AND state IN {_PENDING_SQL}" if pending_only else ""
    rows = await conn.fetch(
        f"SELECT {_RECIPIENT_COLUMNS} FROM outbound_recipients WHERE message_id = $1{where} ORDER BY position",
        message_id,
    )
    return [_recipient(r) for r in rows]


async def _settle(conn: Conn, message_id: str, newly_bounced: list[RecipientStatus]) -> ReportResult:
    """After recipients changed: end the lease, schedule the next attempt or finish the message."""
    pending, next_attempt = await conn.fetchrow(
        "SELECT COUNT(*), MIN(next_attempt) FROM outbound_recipients"
        f" WHERE message_id = $1 AND state IN {_PENDING_SQL}",
        message_id,
    )
    if pending:
        await conn.execute(
            "UPDATE outbound_messages SET lease_holder = '', lease_expires = 0, next_attempt = $2 WHERE id = $1",
            message_id,
            next_attempt,
        )
        return ReportResult(False, newly_bounced, [])
    blob_key = await conn.fetchval(
        "UPDATE outbound_messages SET lease_holder = '', lease_expires = 0, done = true WHERE id = $1 AND NOT done"
        " RETURNING blob_key",
        message_id,
    )
    freed = await release_blobs(conn, [blob_key]) if blob_key else []
    return ReportResult(True, newly_bounced, freed)


class PostgresQueueStore:
    def __init__(self, metadata: PostgresMetadataStore) -> None:
        self._db = metadata

    # ---- queue

    async def enqueue(self, item: NewOutbound, now: float) -> EnqueueResult:
        pending = any(r.state in PENDING for r in item.recipients)

        async def txn(conn: Conn) -> EnqueueResult:
            # The partial unique index decides between two replicas enqueuing one idempotency key at once.
            inserted = await conn.fetchval(
                "INSERT INTO outbound_messages (id, sender, blob_key, size, created, client, idempotency_key,"
                " message_id_header, original_headers, next_attempt, done)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $5, $10)"
                " ON CONFLICT (client, idempotency_key) WHERE idempotency_key <> '' DO NOTHING RETURNING id",
                item.id,
                item.sender,
                item.blob_key if pending else "",
                item.size,
                now,
                item.client,
                item.idempotency_key,
                item.message_id_header,
                item.original_headers,
                not pending,
            )
            if inserted is None:
                earlier = await self._find(conn, item.client, item.idempotency_key)
                assert earlier is not None
                return EnqueueResult(earlier, duplicate=True)
            await conn.executemany(
                "INSERT INTO outbound_recipients (message_id, position, recipient, domain, local, state, last_error,"
                " next_attempt, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                [
                    (item.id, i, r.address, _domain(r.address), r.local, r.state, r.error, now)
                    for i, r in enumerate(item.recipients)
                ],
            )
            if pending:
                await reference_blobs(conn, [item.blob_key])
            return EnqueueResult(item.id, duplicate=False)

        return await self._db.run_write(txn)

    @staticmethod
    async def _find(conn: Conn, client: str, idempotency_key: str) -> str | None:
        found = await conn.fetchval(
            "SELECT id FROM outbound_messages WHERE client = $1 AND idempotency_key = $2", client, idempotency_key
        )
        return str(found) if found is not None else None

    async def find_idempotent(self, client: str, idempotency_key: str) -> str | None:
        return await self._db.run_read(lambda conn: self._find(conn, client, idempotency_key))

    async def lease_next(self, worker: str, ttl: float, now: float, limit: int) -> list[LeasedOutbound]:
        async def txn(conn: Conn) -> list[LeasedOutbound]:
            # SKIP LOCKED: a row another replica is leasing right now is passed over, not waited for.
            leased = await conn.fetch(
                "UPDATE outbound_messages SET lease_holder = $1, lease_expires = $2, attempts = attempts + 1"
                " WHERE id IN (SELECT id FROM outbound_messages WHERE NOT done AND next_attempt <= $3"
                " AND lease_expires <= $3 ORDER BY next_attempt LIMIT $4 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, sender, blob_key, size, attempts, next_attempt",
                worker,
                now + ttl,
                now,
                limit,
            )
            out = []
            for message_id, sender, blob_key, size, attempts, _ in sorted(leased, key=lambda r: (r[5], r[0])):
                by_domain: dict[str, list[str]] = {}
                for r in await _recipients(conn, message_id, pending_only=True):
                    by_domain.setdefault(_domain(r.address), []).append(r.address)
                out.append(LeasedOutbound(message_id, sender, blob_key, size, attempts, by_domain))
            return out

        return await self._db.run_write(txn)

    async def report(
        self, message_id: str, worker: str, outcomes: Sequence[RecipientOutcome], now: float
    ) -> ReportResult:
        async def txn(conn: Conn) -> ReportResult:
            row = await conn.fetchrow(
                "SELECT lease_holder, done FROM outbound_messages WHERE id = $1 FOR UPDATE", message_id
            )
            if row is None:
                raise NotFound(f"no queued message {message_id}")
            holder, done = row
            # A report after the lease expired is still taken while nobody else leased the message:
            # the delivery happened, and forgetting it would only cause a duplicate.
            if done or holder != worker:
                raise NotAllowed(f"message {message_id} is not leased by {worker}")
            bounced: list[RecipientStatus] = []
            for outcome in outcomes:
                updated = await conn.fetch(
                    "UPDATE outbound_recipients SET state = $1, attempts = attempts + 1, last_error = $2,"
                    " remote_mta = $3, next_attempt = $4, updated = $5"
                    f" WHERE message_id = $6 AND recipient = $7 AND state IN {_PENDING_SQL}"
                    f" RETURNING {_RECIPIENT_COLUMNS}",
                    outcome.state, outcome.error, outcome.remote_mta, outcome.next_attempt, now, message_id,
                    outcome.address,
                )  # fmt: skip
                if outcome.state == "bounced":
                    bounced += [_recipient(r) for r in updated]
            return await _settle(conn, message_id, bounced)

        return await self._db.run_write(txn)

    async def leased_blob(self, message_id: str, worker: str) -> str:
        key = await self._db.run_read(
            lambda conn: conn.fetchval(
                "SELECT blob_key FROM outbound_messages WHERE id = $1 AND lease_holder = $2 AND NOT done",
                message_id,
                worker,
            )
        )
        if key is None:
            raise NotAllowed(f"message {message_id} is not leased by {worker}")
        return str(key)

    async def status(self, message_id: str) -> OutboundStatus | None:
        async def txn(conn: Conn) -> OutboundStatus | None:
            row = await conn.fetchrow(
                "SELECT id, sender, created, message_id_header, original_headers, done FROM outbound_messages"
                " WHERE id = $1",
                message_id,
            )
            if row is None:
                return None
            return OutboundStatus(row[0], row[1], row[2], row[3], bytes(row[4]), bool(row[5]),
                                  await _recipients(conn, message_id))  # fmt: skip

        return await self._db.run_read(txn, snapshot=True)

    async def expire(self, created_before: float, now: float) -> list[tuple[str, ReportResult]]:
        async def txn(conn: Conn) -> list[tuple[str, ReportResult]]:
            ids = [
                r[0]
                for r in await conn.fetch(
                    "SELECT id FROM outbound_messages WHERE NOT done AND created < $1 AND lease_expires <= $2"
                    " ORDER BY id FOR UPDATE SKIP LOCKED",
                    created_before,
                    now,
                )
            ]
            out = []
            for message_id in ids:
                bounced = await conn.fetch(
                    "UPDATE outbound_recipients SET state = 'bounced', updated = $1,"
                    " last_error = CASE WHEN last_error = '' THEN 'delivery time expired'"
                    " ELSE 'delivery time expired; last error: ' || last_error END"
                    f" WHERE message_id = $2 AND state IN {_PENDING_SQL} RETURNING {_RECIPIENT_COLUMNS}",
                    now,
                    message_id,
                )
                out.append((message_id, await _settle(conn, message_id, [_recipient(r) for r in bounced])))
            return out

        return await self._db.run_write(txn)

    async def queue_depth(self) -> int:
        count = await self._db.run_read(
            lambda conn: conn.fetchval("SELECT COUNT(*) FROM outbound_messages WHERE NOT done")
        )
        return int(count)

    async def oldest_pending(self) -> float | None:
        oldest = await self._db.run_read(
            lambda conn: conn.fetchval("SELECT MIN(created) FROM outbound_messages WHERE NOT done")
        )
        return None if oldest is None else float(oldest)

    # ---- tokens

    async def create_token(self, record: TokenRecord, token_hash: str) -> None:
        async def txn(conn: Conn) -> None:
            created = await conn.fetchval(
                "INSERT INTO api_tokens (name, token_hash, from_domains, from_addresses, created)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING name",
                record.name, token_hash, " ".join(record.from_domains), " ".join(record.from_addresses),
                record.created,
            )  # fmt: skip
            if created is None:
                raise AlreadyExists(f"token {record.name} exists")

        await self._db.run_write(txn)

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        row = await self._db.run_read(
            lambda conn: conn.fetchrow(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1", token_hash)
        )
        return _token(row) if row else None

    async def list_tokens(self) -> list[TokenRecord]:
        rows = await self._db.run_read(
            lambda conn: conn.fetch(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY name")
        )
        return [_token(r) for r in rows]

    async def revoke_token(self, name: str) -> None:
        async def txn(conn: Conn) -> None:
            if await conn.fetchval("DELETE FROM api_tokens WHERE name = $1 RETURNING name", name) is None:
                raise NotFound(f"no token {name}")

        await self._db.run_write(txn)


if TYPE_CHECKING:
    _queue: QueueStore = PostgresQueueStore(PostgresMetadataStore(""))
    _tokens: TokenStore = PostgresQueueStore(PostgresMetadataStore(""))
