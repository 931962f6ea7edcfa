"""The outbound queue and the API tokens of the Send API (ADR 0007).

A queued message is one row (envelope sender, blob key, lease, next attempt) and one row
per recipient (state, attempts, last error). Local recipients of a Send are recorded too,
already delivered, so that a status query answers for every recipient.
A message is leased to one worker at a time; a lease that is not reported on before it
expires makes the message due again (a dead worker's work is redone, at most once more).
Every method is one transaction; `now` is passed in so that tests control time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

RecipientStateName = Literal["queued", "delivered", "deferred", "bounced"]
PENDING: tuple[RecipientStateName, ...] = ("queued", "deferred")


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str
    local: bool
    state: RecipientStateName  # "delivered" (local, stored at once), "queued" (remote) or "bounced"
    error: str = ""


@dataclass(frozen=True, slots=True)
class NewOutbound:
    id: str
    sender: str  # envelope sender, "" = null sender (bounces)
    blob_key: str  # the body; referenced while any recipient is pending
    size: int
    recipients: Sequence[NewRecipient]
    client: str = ""  # the token name (or "smtp:ACCOUNT"); scopes the idempotency key
    idempotency_key: str = ""
    message_id_header: str = ""
    original_headers: bytes = b""  # for the DSN's text/rfc822-headers part (RFC 3464 §2)


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    id: str
    duplicate: bool  # an earlier enqueue with the same (client, idempotency_key): its id


@dataclass(frozen=True, slots=True)
class LeasedOutbound:
    id: str
    sender: str
    blob_key: str
    size: int
    attempt: int  # 1 for the first attempt
    by_domain: dict[str, list[str]]  # pending recipients grouped per domain, in enqueue order


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    address: str
    state: RecipientStateName  # "delivered", "deferred" or "bounced"
    error: str = ""
    remote_mta: str = ""
    next_attempt: float = 0.0  # deferred only


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    address: str
    local: bool
    state: RecipientStateName
    attempts: int
    last_error: str
    remote_mta: str
    next_attempt: float
    updated: float


@dataclass(frozen=True, slots=True)
class OutboundStatus:
    id: str
    sender: str
    created: float
    message_id_header: str
    original_headers: bytes
    done: bool
    recipients: list[RecipientStatus] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReportResult:
    done: bool  # no recipient pending any more
    newly_bounced: list[RecipientStatus]  # recipients that bounced with this report (for the DSN)
    freed_blobs: list[str]  # blob keys nobody references any more: delete them


class QueueStore(Protocol):
    async def enqueue(self, item: NewOutbound, now: float) -> EnqueueResult: ...

    async def find_idempotent(self, client: str, idempotency_key: str) -> str | None:
        """The id of the message enqueued earlier with this (client, key), if any."""
        ...

    async def lease_next(self, worker: str, ttl: float, now: float, limit: int) -> list[LeasedOutbound]:
        """Due messages not leased (or whose lease expired), now leased to worker until now + ttl."""
        ...

    async def report(
        self, message_id: str, worker: str, outcomes: Sequence[RecipientOutcome], now: float
    ) -> ReportResult:
        """Record an attempt's outcomes and end the lease; raises NotAllowed when worker no longer holds it."""
        ...

    async def leased_blob(self, message_id: str, worker: str) -> str:
        """The blob key of a message leased by worker; raises NotAllowed otherwise (no reading others' mail)."""
        ...

    async def status(self, message_id: str) -> OutboundStatus | None: ...

    async def expire(self, created_before: float, now: float) -> list[tuple[str, ReportResult]]:
        """Bounce every pending recipient of messages older than the lifetime (not leased right now)."""
        ...

    async def queue_depth(self) -> int: ...

    async def oldest_pending(self) -> float | None:
        """When the oldest message with a recipient still pending was queued; None for an empty queue."""
        ...


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    from_domains: tuple[str, ...]
    from_addresses: tuple[str, ...]
    created: float


class TokenStore(Protocol):
    async def create_token(self, record: TokenRecord, token_hash: str) -> None:
        """Raises AlreadyExists for a taken name."""
        ...

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    async def list_tokens(self) -> list[TokenRecord]: ...

    async def revoke_token(self, name: str) -> None:
        """Raises NotFound for an unknown name."""
        ...


class QueueBackend(QueueStore, TokenStore, Protocol):
    """Both, as one backend implements them in the metadata database (registry.open_queue_store)."""
