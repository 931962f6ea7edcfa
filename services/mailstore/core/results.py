"""What the mailstore core answers: its own result types, plus the storage records it hands out
as they are (plain frozen dataclasses of the metadata interface, no backend in them)."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mailstack.storage.events.base import ChangeEvent, Subscription
from mailstack.storage.metadata.base import (
    AccountRecord,
    BodyReference,
    ChangeRecord,
    CopyResult,
    ExpungeResult,
    FlagUpdate,
    InsertResult,
    MailboxCounts,
    MailboxRecord,
    MessageRecord,
    StoreMode,
    UidRanges,
)
from mailstack.storage.quota.base import QuotaUsage

__all__ = [
    "AccountRecord",
    "AccountSummary",
    "BodyReference",
    "BodySlice",
    "ChangeEvent",
    "ChangeRecord",
    "CopyResult",
    "ExpungeResult",
    "FlagUpdate",
    "InsertResult",
    "IntegrityReport",
    "ListedMailbox",
    "MailboxCounts",
    "MailboxRecord",
    "MessageRecord",
    "QuotaUsage",
    "RecipientOutcome",
    "RecipientVerdict",
    "StoreMode",
    "Subscription",
    "UidRanges",
]


class RecipientVerdict(enum.Enum):
    """What the mailstore says of one recipient (SMTP RCPT, a delivery's per-recipient result)."""

    LOCAL = "local"
    NOT_LOCAL = "not_local"  # a domain this mailstore does not serve: relay or refuse
    UNKNOWN = "unknown"  # a served domain without this user
    INVALID = "invalid"  # not an address
    OVER_QUOTA = "over_quota"
    TOO_BIG_FOR_QUOTA = "too_big_for_quota"  # larger than the whole quota: retrying cannot help
    TEMP_FAILURE = "temp_failure"


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    recipient: str
    verdict: RecipientVerdict
    account: str = ""
    uid: int = 0
    uidvalidity: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BodySlice:
    total_size: int
    chunks: AsyncIterator[bytes]
    crlf: bool = False  # only CRLF line ends (BodyChunk.crlf)
    missing: bool = False  # the body is gone from the blob store (BodyChunk.missing; see integrity.py)


@dataclass(frozen=True, slots=True)
class AccountSummary:
    record: AccountRecord
    usage: QuotaUsage
    aliases: list[str]


@dataclass(frozen=True, slots=True)
class ListedMailbox:
    """One LIST answer (RFC 3501 §6.3.8): an existing mailbox (`record`), or a name that exists only
    as the parent of others or as a subscription (\\NonExistent)."""

    name: str
    subscribed: bool
    has_children: bool
    record: MailboxRecord | None
    counts: MailboxCounts | None = None  # with_status only


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    broken: list[BodyReference]  # rows without a body
    orphans: list[str]  # blob keys without a reference
    messages_checked: int
    blobs_checked: int
    repaired: bool
