"""The metadata store: accounts, domains, aliases, mailboxes, messages, change log, leases.

Every method is one transaction. UIDs and MODSEQs are allocated inside the
transaction that inserts or changes a message (never cached in the process), so
that several mailstore replicas can share one database (PostgreSQL, later).
Names passed in are already validated and normalised by the mailstore core
("INBOX" upper-cased, addresses lower-cased).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from mailstack.storage.errors import MailboxNotFound, OverQuota

# Inclusive UID ranges; last == 0 means "up to the highest UID" (IMAP "*").
UidRanges = Sequence[tuple[int, int]]
StoreMode = Literal["replace", "add", "remove"]
ChangeKind = Literal["new", "flags", "expunge"]


# The condition forwards_for adds: the forward's address is still an account's name or an alias.
LIVE_FORWARD = (
    " AND (EXISTS (SELECT 1 FROM accounts a WHERE a.name = f.address)"
    " OR EXISTS (SELECT 1 FROM aliases al WHERE al.address = f.address))"
)


@dataclass(frozen=True, slots=True)
class ForwardRecord:
    """Mail for `address` (an account's name or an alias) also goes to `targets` (outside addresses);
    keep_copy: it is stored for the account too."""

    address: str
    targets: tuple[str, ...]
    keep_copy: bool


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: int
    name: str
    password_hash: str
    quota_bytes: int  # 0 = unlimited
    quota_messages: int  # 0 = unlimited
    used_bytes: int
    used_messages: int


@dataclass(frozen=True, slots=True)
class MailboxRecord:
    id: int
    account_id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str  # "" or "\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", ...
    subscribed: bool


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """Where mail for one address goes: the account it resolves to and the mailbox to store in."""

    account: AccountRecord
    mailbox: MailboxRecord


@dataclass(frozen=True, slots=True)
class MailboxCounts:
    messages: int
    unseen: int
    size: int
    deleted: int
    recent: int  # messages with uid >= the mailbox's recent floor
    first_unseen_uid: int  # 0 = none


@dataclass(frozen=True, slots=True)
class NewMessage:
    blob_key: str
    size: int
    internal_date: int  # unix seconds
    tz_offset: int  # minutes east of UTC of the internal date
    flags: tuple[str, ...]
    envelope: bytes  # serialized mailstack.v1.Envelope
    structure: bytes  # serialized mailstack.v1.BodyPart
    header: bytes  # the raw top-level header block, for SEARCH
    sent_date: int | None  # unix seconds of the Date: header, None if absent/unparsable
    # Migration only (`mailstack import`): the UID to store it under (0 = the next one; else it
    # must be >= the mailbox's UIDNEXT, which moves past it), and the POP3 UIDL the old server
    # announced for it ("" = the default, derived from UIDVALIDITY and UID).
    uid: int = 0
    pop3_uidl: str = ""
    # The body itself, kept in the metadata database in the same transaction (ADR 0045), when
    # the store keeps bodies (`keeps_bodies`) and the body is small; None = in the blob store.
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    uid: int
    modseq: int
    flags: tuple[str, ...]
    internal_date: int
    tz_offset: int
    size: int
    blob_key: str
    envelope: bytes
    structure: bytes
    header: bytes  # b"" unless fetched with with_header=True
    sent_date: int | None
    save_date: int = 0  # unix seconds it was stored in this mailbox (RFC 8514)
    pop3_uidl: str = ""  # the UIDL kept from another server ("" = the default)


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    uid: int
    modseq: int
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InsertResult:
    uid: int
    uidvalidity: int
    modseq: int


@dataclass(frozen=True, slots=True)
class CopyResult:
    uidvalidity: int  # of the destination
    mapping: tuple[tuple[int, int], ...]  # (source uid, destination uid)
    destination_modseq: int
    expunged: tuple[int, ...]  # source UIDs removed (move only)
    source_modseq: int  # modseq of the expunge in the source (move only)


@dataclass(frozen=True, slots=True)
class ExpungeResult:
    expunged: tuple[int, ...]
    modseq: int  # the mailbox's highestmodseq after the expunge
    freed_blobs: tuple[str, ...]  # blob keys whose reference count reached zero
    freed_bytes: int
    freed_messages: int


@dataclass(frozen=True, slots=True)
class BodyReference:
    """A message row and the blob it names (for the integrity check, `mailstack fsck`)."""

    account: str
    mailbox_id: int
    mailbox: str
    uidvalidity: int
    uid: int
    blob_key: str
    size: int


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    uid: int
    modseq: int
    kind: ChangeKind
    flags: tuple[str, ...]  # current flags for "new"/"flags"; () for "expunge"


class MetadataStore(Protocol):
    # Small bodies can be kept in this database, in the message's transaction (ADR 0045).
    keeps_bodies: bool

    async def migrate(self) -> None:
        """Create or upgrade the schema (versioned migrations)."""

    async def close(self) -> None: ...

    # ---- accounts
    async def create_account(
        self,
        name: str,
        password_hash: str,
        quota_bytes: int,
        quota_messages: int,
        mailboxes: Sequence[tuple[str, str]],
    ) -> AccountRecord:
        """Create the account and its default mailboxes [(name, special_use)] in one transaction.
        Raises AlreadyExists."""

    async def get_account(self, name: str) -> AccountRecord | None: ...

    async def list_accounts(self) -> list[AccountRecord]: ...

    async def set_password(self, name: str, password_hash: str) -> None:
        """Raises AccountNotFound."""

    async def set_quota(self, name: str, quota_bytes: int, quota_messages: int) -> AccountRecord: ...

    async def delete_account(self, name: str) -> list[str]:
        """Delete the account with its mailboxes, messages and aliases. Returns blob keys freed."""

    # ---- domains and aliases
    async def add_domain(self, name: str) -> None:
        """Raises AlreadyExists."""

    async def delete_domain(self, name: str) -> None: ...

    async def list_domains(self) -> list[str]: ...

    async def add_alias(self, address: str, account: str) -> None:
        """address "user@domain" or "@domain" (catch-all). Raises AccountNotFound, AlreadyExists."""

    async def delete_alias(self, address: str) -> None: ...

    async def list_aliases(self, account: str | None = None) -> list[tuple[str, str]]:
        """[(address, account name)]."""

    async def set_forward(self, forward: ForwardRecord) -> None:
        """Replace the forward of forward.address (no targets: remove it)."""

    async def list_forwards(self) -> list[ForwardRecord]:
        """All forwards, by address."""

    async def forwards_for(self, addresses: Sequence[str]) -> dict[str, ForwardRecord]:
        """The forwards of those addresses that have one (one read for a whole delivery)."""

    async def resolve_address(self, address: str) -> AccountRecord | None:
        """An account by its own name, then an alias, then the domain's catch-all."""

    async def resolve_delivery(self, addresses: Sequence[str], mailbox_name: str) -> list[DeliveryTarget | None]:
        """resolve_address for each address (None: nobody) with the account's mailbox_name,
        or its INBOX when that does not exist; one read for the whole delivery."""

    # ---- mailboxes
    async def list_mailboxes(self, account_id: int) -> list[MailboxRecord]: ...

    async def get_mailbox(self, account_id: int, name: str) -> MailboxRecord:
        """Raises MailboxNotFound."""

    async def create_mailbox(self, account_id: int, name: str, special_use: str = "") -> MailboxRecord:
        """New UIDVALIDITY never used before in this account (even after delete + create). Raises AlreadyExists."""

    async def adopt_uids(self, mailbox_id: int, uidvalidity: int, uidnext: int) -> MailboxRecord:
        """Migration: take another server's UIDVALIDITY (0 = keep; allowed only while no message was
        ever stored in the mailbox, i.e. its HIGHESTMODSEQ is still 1, or when this call adopted the same
        value before, else NotAllowed) and raise
        UIDNEXT to uidnext (never lowered). The UIDVALIDITY counter moves past an adopted value, so
        a mailbox created later never gets it. Raises MailboxNotFound."""

    async def delete_mailbox(self, account_id: int, name: str) -> ExpungeResult:
        """Delete one mailbox and its messages (children stay). Raises NotAllowed for INBOX."""

    async def rename_mailbox(self, account_id: int, name: str, new_name: str) -> None:
        """Children move with it. Renaming INBOX moves its messages into a new mailbox
        new_name and leaves INBOX empty. Raises MailboxNotFound, AlreadyExists."""

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        """Subscriptions are by name and may name mailboxes that do not exist."""

    async def list_subscriptions(self, account_id: int) -> list[str]: ...

    async def mailbox_counts(self, mailbox_id: int) -> MailboxCounts: ...

    async def claim_recent(self, mailbox_id: int) -> tuple[int, int]:
        """Atomically return (recent floor, uidnext) and move the floor to uidnext."""

    # ---- messages
    async def insert_message(self, mailbox_id: int, message: NewMessage, enforce_quota: bool) -> InsertResult:
        """Allocate UID and MODSEQ, add a blob reference, account usage and a "new" change.
        With message.uid set, store under that UID: NotAllowed when it is below UIDNEXT.
        Raises OverQuota (only when enforce_quota), MailboxNotFound."""

    async def deliver(
        self, mailbox_ids: Sequence[int], message: NewMessage, enforce_quota: bool
    ) -> list[InsertResult | OverQuota | MailboxNotFound]:
        """insert_message into several mailboxes (one blob shared) in one transaction;
        each target succeeds or fails on its own."""

    async def fetch(
        self, mailbox_id: int, uids: UidRanges | None = None, changed_since: int = 0, with_header: bool = False
    ) -> list[MessageRecord]:
        """Messages in UID order; uids None = all."""

    async def store_flags(
        self, mailbox_id: int, uids: UidRanges, mode: StoreMode, flags: Sequence[str], unchanged_since: int | None
    ) -> tuple[list[FlagUpdate], list[int]]:
        """Change flags; only messages whose flags really change get a new MODSEQ.
        Returns (updated, failed UNCHANGEDSINCE UIDs)."""

    async def copy(
        self, mailbox_id: int, uids: UidRanges, destination_id: int, move: bool, enforce_quota: bool
    ) -> CopyResult:
        """Copy (sharing blobs) or move in one transaction. Raises OverQuota (copy only)."""

    async def expunge(self, mailbox_id: int, uids: UidRanges | None) -> ExpungeResult:
        """Remove messages flagged \\Deleted (restricted to uids when given)."""

    async def changes_since(self, mailbox_id: int, modseq: int) -> list[ChangeRecord]:
        """Changes with modseq > modseq, in modseq order (expunges from the log)."""

    async def pruned_modseq(self, mailbox_id: int) -> int:
        """The MODSEQ up to which expunges may be missing from the log (0: the log is whole)."""

    async def prune_changes(self, before: float) -> int:
        """Drop the expunges logged before this time (unix seconds); returns how many."""

    # ---- quota and blobs
    async def recompute_usage(self, account_id: int) -> tuple[int, int]:
        """Set the account's counters from its messages; returns (bytes, messages)."""

    async def blob_referenced(self, key: str) -> bool: ...

    async def kept_body(self, key: str) -> bytes | None:
        """The body kept in this database under key (ADR 0045); None = not here (in the blob store)."""

    async def body_references(self, account_id: int | None = None) -> list[BodyReference]:
        """Every message row's blob key (of one account, or all), for the integrity check."""

    async def remove_messages(self, mailbox_id: int, uids: Sequence[int]) -> ExpungeResult:
        """Expunge exactly these UIDs, \\Deleted or not (a repair): logged as expunges, counters
        and blob references released as by expunge."""

    # ---- leases
    async def acquire_lease(self, name: str, holder: str, ttl_seconds: int) -> tuple[bool, str]:
        """Take or renew (same holder) a lease; (granted, current holder)."""

    async def release_lease(self, name: str, holder: str) -> None: ...

    # ---- failed logins, counted across every process on this database (ADR 0046)
    async def auth_failures(self, ip: str, account: str, window: float) -> tuple[int, int, int]:
        """Failed logins in the last `window` seconds: from `ip`, at `account`, and of that pair
        (the account's counts are 0 when it is "")."""

    async def record_auth_failure(self, ip: str, account: str, window: float) -> None:
        """Note a failed login now; failures older than `window` seconds are dropped on the way."""

    async def forget_auth_failures(self, ip: str, account: str) -> None:
        """The pair's failures are forgotten (its owner logged in: ADR 0011 §3)."""


__all__ = [
    "AccountRecord",
    "BodyReference",
    "ChangeRecord",
    "CopyResult",
    "DeliveryTarget",
    "ExpungeResult",
    "FlagUpdate",
    "InsertResult",
    "MailboxCounts",
    "MailboxNotFound",
    "MailboxRecord",
    "MessageRecord",
    "MetadataStore",
    "NewMessage",
    "OverQuota",
    "UidRanges",
]
