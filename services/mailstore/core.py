"""The mailstore core: every rule about mail lives here; the gRPC servicer only translates.

Durability order (ARCHITECTURE.md "Rules that keep mail safe"): blob first, then the
metadata transaction, then events; the caller is acknowledged only after both writes.
A crash in between leaves an orphan blob that the sweeper removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from mailstack.message import mime, names, sections
from mailstack.message.flags import is_recent, stored_system_flag
from mailstack.services.common.auth_throttle import AuthThrottle
from mailstack.services.common.config import Settings
from mailstack.services.common.metrics import BLOB_CACHE_BYTES, BLOB_CACHE_LOOKUPS
from mailstack.services.mailstore import passwords, search
from mailstack.services.mailstore.instrumented import instrumented
from mailstack.storage import registry
from mailstack.storage.blob.base import BlobStore
from mailstack.storage.blob.cache import CachedBlobStore
from mailstack.storage.errors import (
    AccountNotFound,
    BlobNotFound,
    InvalidName,
    MailboxNotFound,
    NotAllowed,
    OverQuota,
    StorageError,
    StorageUnavailable,
)
from mailstack.storage.events.base import ChangeEvent, EventBus, Subscription
from mailstack.storage.metadata.base import (
    AccountRecord,
    ChangeRecord,
    CopyResult,
    ExpungeResult,
    FlagUpdate,
    InsertResult,
    MailboxCounts,
    MailboxRecord,
    MessageRecord,
    MetadataStore,
    NewMessage,
    StoreMode,
    UidRanges,
)
from mailstack.storage.quota.base import QuotaStore, QuotaUsage
from mailstack.v1 import mailstore_pb2 as pb

log = logging.getLogger("mailstack.mailstore")
T = TypeVar("T")

DEFAULT_MAILBOXES: tuple[tuple[str, str], ...] = (
    ("INBOX", ""),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
MAX_FLAGS = 100
MAX_FLAG_LENGTH = 100
MAX_PASSWORD_LENGTH = 1024
BODY_CHUNK = 1024 * 1024
_HEADER_TEXTS = (pb.SECTION_HEADER, pb.SECTION_HEADER_FIELDS, pb.SECTION_HEADER_FIELDS_NOT)
ACCOUNT_ID_CACHE = 10_000
SEARCH_BODY_CONCURRENCY = 8
SEARCH_BATCH = 64  # messages whose bodies a SEARCH BODY/TEXT holds at once
SEARCH_SLICE = 0.02  # seconds a SEARCH evaluates before letting other calls run
FETCH_BODIES_CONCURRENCY = 8  # blob reads in flight for one FetchBodies call
BLOB_DELETE_CONCURRENCY = 8
QUOTA_WATCH_SECONDS = 30.0  # how soon counters lost with a Redis outage or restart are recomputed
SMALL_MAILBOX = 128  # uidnext at most this: whole-mailbox metadata reads name their UID range
WHOLE_BLOB_READ = 256 * 1024  # up to this size a message is read once, all its sections sliced from it


class AuthFailed(Exception):
    """Wrong credentials; deliberately says nothing about whether the account exists."""


class TooBig(Exception):
    pass


class InvalidRequest(Exception):
    pass


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    recipient: str
    status: pb.RecipientStatus.ValueType
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


async def settle(write: asyncio.Future[T]) -> T:
    """The outcome of a metadata write that follows a blob write, even when the caller is
    cancelled meanwhile (a client gone right after its final "."): the write is shielded, and on
    cancellation the caller waits for it to end before the cancellation goes on, so that the
    caller deletes the blob only when the write certainly committed nothing (write_failed).
    Cancelled again while waiting, it stops waiting: the write may still commit, so the blob must
    stay (an orphan at worst, which the sweeper removes; never a message without its body)."""
    try:
        return await asyncio.shield(write)
    except asyncio.CancelledError:
        if not write.done():
            await asyncio.wait([write])
        raise


def write_failed(write: asyncio.Future[Any]) -> bool:
    """The write ended without committing (an error, or cancelled before it was queued)."""
    return write.done() and (write.cancelled() or write.exception() is not None)


def new_blob_key() -> str:
    # Time-ordered (hex nanoseconds) plus randomness: unique across replicas, sortable by age.
    return f"{time.time_ns():016x}-{os.urandom(8).hex()}"


def normalize_flags(flags: Sequence[str]) -> tuple[str, ...]:
    """System flags in canonical case, keywords as atoms; \\Recent is session state, never stored."""
    if len(flags) > MAX_FLAGS:
        raise InvalidRequest("too many flags")
    out: set[str] = set()
    for flag in flags:
        if not flag or len(flag) > MAX_FLAG_LENGTH or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in flag):
            raise InvalidRequest(f"invalid flag {flag!r}")
        if flag.startswith("\\"):
            canonical = stored_system_flag(flag)
            if canonical is None:
                if is_recent(flag):
                    continue
                raise InvalidRequest(f"unknown system flag {flag!r}")
            out.add(canonical)
        else:
            if any(c in '(){%*"\\]' for c in flag):
                raise InvalidRequest(f"invalid keyword {flag!r}")
            out.add(flag)
    return tuple(sorted(out))


def _mailbox_name(name: str) -> str:
    try:
        return names.normalize_mailbox_name(name)
    except names.InvalidNameError as e:
        raise InvalidName(str(e)) from None


def _address(address: str, allow_catchall: bool = False) -> str:
    try:
        return names.normalize_address(address, allow_catchall=allow_catchall)
    except names.InvalidNameError as e:
        raise InvalidName(str(e)) from None


def _export_cache_metrics(cache: CachedBlobStore) -> None:
    hit, miss = BLOB_CACHE_LOOKUPS.labels("hit"), BLOB_CACHE_LOOKUPS.labels("miss")
    cache.on_lookup = lambda found: (hit if found else miss).inc()
    BLOB_CACHE_BYTES.set_function(lambda: cache.cached_bytes)


class MailstoreCore:
    def __init__(
        self, settings: Settings, metadata: MetadataStore, blobs: BlobStore, events: EventBus, quota: QuotaStore
    ) -> None:
        self.settings = settings
        passwords.dummy_hash(settings.password_scrypt_log_n)  # a bad cost setting fails at start
        self.metadata = metadata
        self.blobs = blobs
        self.events = events
        self.quota = quota
        self._sweeper: asyncio.Task[None] | None = None
        self._quota_watch: asyncio.Task[None] | None = None
        self._quota_suspect = False  # the quota store's counters missed a change (see repair_quota)
        self._account_ids: dict[str, int] = {}  # fetch_body's name -> id cache (see _read_mailbox)
        # every login of every frontend and every Send token check (ADR 0011)
        self.auth_throttle = AuthThrottle(
            settings.auth_max_attempts_per_ip, settings.auth_max_attempts_per_account, settings.auth_failure_window
        )

    @classmethod
    async def open(cls, settings: Settings) -> MailstoreCore:
        metadata = registry.open_metadata_store(settings.effective_metadata_url)
        await metadata.migrate()
        blobs = registry.open_blob_store(
            settings.effective_blob_url,
            s3_endpoint=settings.s3_endpoint,
            s3_region=settings.s3_region,
            s3_path_style=settings.s3_path_style,
            cache_bytes=settings.blob_cache_bytes,
        )
        if isinstance(blobs, CachedBlobStore):
            _export_cache_metrics(blobs)
        events = registry.open_event_bus(settings.events_url)
        quota = registry.open_quota_store(settings.quota_url, metadata)
        # Every storage call gets a span ("blob.put", "metadata.deliver", "events.publish") and a latency histogram.
        return cls(
            settings,
            instrumented(metadata, "metadata"),
            instrumented(blobs, "blob"),
            instrumented(events, "events"),
            instrumented(quota, "quota"),
        )

    def start_background(self) -> None:
        if self.settings.orphan_sweep_seconds > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="orphan-sweeper")
        if not self.quota.enforced_by_metadata and self._quota_watch is None:
            self._quota_watch = asyncio.create_task(self._watch_quota_forever(), name="quota-watch")

    async def close(self) -> None:
        if self._quota_watch is not None:
            self._quota_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._quota_watch
            self._quota_watch = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        for closer in (self.events.close, self.quota.close, self.blobs.close, self.metadata.close):
            try:
                await closer()
            except Exception:  # closing is best effort
                log.exception("error while closing a backend")

    # ------------------------------------------------------------ accounts

    async def account(self, name: str) -> AccountRecord:
        record = await self.metadata.get_account(_address(name))
        if record is None:
            raise AccountNotFound(f"no account {name}")
        return record

    async def authenticate(self, username: str, password: str, authzid: str = "", remote_ip: str = "") -> str:
        """SASL PLAIN semantics (RFC 4616): authzid empty or the same account.

        Throttled per client IP and per account (ADR 0011): the attempt takes its slot before the
        password is hashed and raises Throttled when the IP or the account has used up its window."""
        username = await self._login_address(username)
        try:
            name = names.normalize_address(username)
        except names.InvalidNameError:
            name = ""
        attempt = self.auth_throttle.begin(remote_ip, name or username.strip().lower()[:320])
        try:
            account = await self._check_password(name, password, authzid)
        except AuthFailed:
            attempt.failed()
            raise
        except BaseException:
            attempt.abandoned()  # an error or a cancelled call: nothing learnt, the slot goes back
            raise
        attempt.succeeded()
        return account

    async def _check_password(self, name: str, password: str, authzid: str) -> str:
        record = await self.metadata.get_account(name) if name else None
        stored = record.password_hash if record else passwords.dummy_hash(self.settings.password_scrypt_log_n)
        ok = len(password) <= MAX_PASSWORD_LENGTH and await asyncio.to_thread(
            passwords.verify_password, password, stored
        )
        if not ok or record is None:
            raise AuthFailed("authentication failed")
        if authzid:
            try:
                if names.normalize_address(await self._login_address(authzid)) != record.name:
                    raise AuthFailed("authentication failed")
            except names.InvalidNameError:
                raise AuthFailed("authentication failed") from None
        return record.name

    async def _login_address(self, username: str) -> str:
        """'alice' means alice@<login domain>, as clients configured with a bare user name expect."""
        if "@" in username or not username:
            return username
        domain = self.settings.login_domain
        if not domain:
            served = await self.metadata.list_domains()
            domain = served[0] if len(served) == 1 else ""
        return f"{username}@{domain}" if domain else username

    async def create_account(self, name: str, password: str, quota_bytes: int, quota_messages: int) -> AccountRecord:
        name = _address(name)
        if not password or len(password) > MAX_PASSWORD_LENGTH:
            raise InvalidRequest("password must be 1..1024 characters")
        domain = names.domain_of(name)
        if domain not in await self.metadata.list_domains():
            await self.metadata.add_domain(domain)
        hashed = await asyncio.to_thread(passwords.hash_password, password, self.settings.password_scrypt_log_n)
        quota_bytes = quota_bytes or self.settings.default_quota_bytes
        quota_messages = quota_messages or self.settings.default_quota_messages
        record = await self.metadata.create_account(name, hashed, quota_bytes, quota_messages, DEFAULT_MAILBOXES)
        # Clients that show only subscribed folders (Thunderbird, phones) must see the defaults.
        for mailbox, _ in DEFAULT_MAILBOXES:
            await self.metadata.set_subscribed(record.id, mailbox, True)
        return record

    async def set_password(self, name: str, password: str) -> None:
        if not password or len(password) > MAX_PASSWORD_LENGTH:
            raise InvalidRequest("password must be 1..1024 characters")
        hashed = await asyncio.to_thread(passwords.hash_password, password, self.settings.password_scrypt_log_n)
        await self.metadata.set_password(_address(name), hashed)

    async def delete_account(self, name: str) -> None:
        name = _address(name)
        freed = await self.metadata.delete_account(name)
        await self._delete_blobs(freed)
        await self.quota.set_usage(name, QuotaUsage(0, 0))

    async def set_quota(self, name: str, quota_bytes: int, quota_messages: int) -> AccountRecord:
        return await self.metadata.set_quota(_address(name), quota_bytes, quota_messages)

    async def list_accounts(self) -> list[AccountRecord]:
        return await self.metadata.list_accounts()

    async def account_usage(self, record: AccountRecord) -> QuotaUsage:
        if self.quota.enforced_by_metadata:
            return QuotaUsage(record.used_bytes, record.used_messages)
        try:
            return await self.quota.usage(record.name)
        except StorageUnavailable as e:
            # Redis down must not stop mail: the metadata store keeps counters of its own (it adds
            # every message's size in the inserting transaction); see _reserve.
            log.warning("quota counters unavailable (%s); using the metadata's for %s", e, record.name)
            return QuotaUsage(record.used_bytes, record.used_messages)

    async def recompute_quota(self, name: str = "") -> list[AccountRecord]:
        records = [await self.account(name)] if name else await self.metadata.list_accounts()
        out = []
        for record in records:
            used_bytes, used_messages = await self.metadata.recompute_usage(record.id)
            await self.quota.set_usage(record.name, QuotaUsage(used_bytes, used_messages))
            out.append(await self.account(record.name))
        return out

    async def add_domain(self, name: str) -> str:
        try:
            domain = names.normalize_domain(name)
        except names.InvalidNameError as e:
            raise InvalidName(str(e)) from None
        await self.metadata.add_domain(domain)
        return domain

    async def add_alias(self, address: str, account: str) -> tuple[str, str]:
        address = _address(address, allow_catchall=True)
        record = await self.account(account)
        domain = names.domain_of(address)
        if domain not in await self.metadata.list_domains():
            await self.metadata.add_domain(domain)
        await self.metadata.add_alias(address, record.name)
        return address, record.name

    # ------------------------------------------------------------ recipients

    async def resolve_recipient(self, address: str, size: int = 0) -> tuple[pb.RecipientStatus.ValueType, str]:
        """(pb.RecipientStatus, account) for SMTP RCPT: aliases and catch-alls included."""
        try:
            address = names.normalize_address(address)
        except names.InvalidNameError:
            return pb.RECIPIENT_INVALID, ""
        record = await self.metadata.resolve_address(address)
        if record is None:
            if names.domain_of(address) in await self.metadata.list_domains():
                return pb.RECIPIENT_UNKNOWN, ""
            return pb.RECIPIENT_NOT_LOCAL, ""
        if size > self.settings.max_message_size:
            return pb.RECIPIENT_TOO_BIG_FOR_QUOTA, record.name
        return self._quota_status(record, await self._usage_if_limited(record), size), record.name

    async def _usage_if_limited(self, record: AccountRecord) -> QuotaUsage:
        """Usage for a quota check; an account without limits needs none (no Redis round trip)."""
        if not (record.quota_bytes or record.quota_messages):
            return QuotaUsage(0, 0)
        return await self.account_usage(record)

    @staticmethod
    def _quota_status(record: AccountRecord, usage: QuotaUsage, size: int) -> pb.RecipientStatus.ValueType:
        if record.quota_bytes and size > record.quota_bytes:
            return pb.RECIPIENT_TOO_BIG_FOR_QUOTA
        if record.quota_bytes and usage.bytes + size > record.quota_bytes:
            return pb.RECIPIENT_OVER_QUOTA
        if record.quota_messages and usage.messages + 1 > record.quota_messages:
            return pb.RECIPIENT_OVER_QUOTA
        return pb.RECIPIENT_LOCAL

    async def check_sender(self, account: str, address: str) -> bool:
        """An account may send as itself or as one of its aliases (not as a catch-all)."""
        try:
            address = names.normalize_address(address)
        except names.InvalidNameError:
            return False
        record = await self.account(account)
        if address == record.name:
            return True
        return any(a == address for a, _ in await self.metadata.list_aliases(record.name))

    # ------------------------------------------------------------ mailboxes

    async def mailbox(self, account: str, name: str) -> tuple[AccountRecord, MailboxRecord]:
        record = await self.account(account)
        return record, await self.metadata.get_mailbox(record.id, _mailbox_name(name))

    async def list_mailboxes(self, account: str) -> tuple[list[MailboxRecord], list[str]]:
        record = await self.account(account)
        return await self.metadata.list_mailboxes(record.id), await self.metadata.list_subscriptions(record.id)

    async def create_mailbox(self, account: str, name: str, special_use: str = "") -> MailboxRecord:
        record = await self.account(account)
        name = _mailbox_name(name)
        mailbox = await self.metadata.create_mailbox(record.id, name, special_use)
        await self._publish(ChangeEvent(record.name, name, "mailbox", (), 0, mailbox.uidvalidity))
        return mailbox

    async def delete_mailbox(self, account: str, name: str) -> None:
        record = await self.account(account)
        name = _mailbox_name(name)
        if name == "INBOX":
            raise NotAllowed("INBOX cannot be deleted")
        result = await self.metadata.delete_mailbox(record.id, name)
        await self._after_expunge(record, result)
        await self._publish(ChangeEvent(record.name, name, "mailbox"))

    async def rename_mailbox(self, account: str, name: str, new_name: str) -> None:
        record = await self.account(account)
        name, new_name = _mailbox_name(name), _mailbox_name(new_name)
        if new_name == "INBOX" or (new_name.startswith("INBOX/") and name == "INBOX"):
            raise NotAllowed("cannot rename to INBOX or below itself")
        if new_name == name or new_name.startswith(name + "/"):
            raise NotAllowed("cannot rename a mailbox into itself")
        await self.metadata.rename_mailbox(record.id, name, new_name)
        await self._publish(ChangeEvent(record.name, name, "mailbox"))
        await self._publish(ChangeEvent(record.name, new_name, "mailbox"))

    async def subscribe(self, account: str, name: str, subscribed: bool) -> None:
        record = await self.account(account)
        await self.metadata.set_subscribed(record.id, _mailbox_name(name), subscribed)

    async def status(self, account: str, name: str) -> tuple[MailboxRecord, MailboxCounts]:
        mailbox = await self._read_mailbox(account, name)
        return mailbox, await self.metadata.mailbox_counts(mailbox.id)

    async def claim_recent(self, account: str, name: str) -> tuple[int, int]:
        mailbox = await self._read_mailbox(account, name)
        return await self.metadata.claim_recent(mailbox.id)

    # ------------------------------------------------------------ storing messages

    async def _analyse(self, data: bytes, flags: tuple[str, ...], when: datetime | None) -> NewMessage:
        # Parsing a big message is CPU work: keep it off the event loop.
        parsed = (
            await asyncio.to_thread(mime.parse_message, data) if len(data) > 256 * 1024 else mime.parse_message(data)
        )
        if when is None:
            when = datetime.now().astimezone()
        offset = when.utcoffset()
        return NewMessage(
            blob_key=new_blob_key(),
            size=len(data),
            internal_date=int(when.timestamp()),
            tz_offset=int(offset.total_seconds() // 60) if offset else 0,
            flags=flags,
            envelope=parsed.envelope.SerializeToString(),
            structure=parsed.structure.SerializeToString(),
            header=parsed.header,
            sent_date=parsed.sent_date,
        )

    def _check_size(self, size: int) -> None:
        if size > self.settings.max_message_size:
            raise TooBig(f"message of {size} bytes is over the limit of {self.settings.max_message_size}")
        if size == 0:
            raise InvalidRequest("empty message")

    async def append(
        self, account: str, mailbox_name: str, data: bytes, flags: Sequence[str], when: datetime | None
    ) -> InsertResult:
        self._check_size(len(data))
        record, mailbox = await self.mailbox(account, mailbox_name)
        message = await self._analyse(data, normalize_flags(flags), when)
        await self._reserve(record, message.size)
        try:
            await self.blobs.put(message.blob_key, data)
        except BaseException:
            await self._unreserve(record, message.size)
            await self._delete_blobs([message.blob_key])  # a put cut short may land later: the sweeper's
            raise
        write = asyncio.ensure_future(
            self.metadata.insert_message(mailbox.id, message, self.quota.enforced_by_metadata)
        )
        try:
            result = await settle(write)
        except BaseException:
            if write_failed(write):
                await self._unreserve(record, message.size)
                await self._delete_blobs([message.blob_key])
            elif not write.done():
                self._quota_suspect = True  # not known whether the reservation is used
            else:  # committed; only the caller is gone: the message is stored, sessions hear of it
                done = write.result()
                await self._publish(
                    ChangeEvent(record.name, mailbox.name, "new", (done.uid,), done.modseq, done.uidvalidity)
                )
            raise
        await self._publish(
            ChangeEvent(record.name, mailbox.name, "new", (result.uid,), result.modseq, result.uidvalidity)
        )
        return result

    async def deliver(
        self, sender: str, recipients: Sequence[str], data: bytes, mailbox_name: str = "INBOX"
    ) -> tuple[list[RecipientOutcome], str]:
        """Store one message for several recipients, sharing one blob; a result per recipient."""
        self._check_size(len(data))
        mailbox_name = _mailbox_name(mailbox_name or "INBOX")
        outcomes: dict[int, RecipientOutcome] = {}
        targets: dict[str, tuple[AccountRecord, MailboxRecord, list[int]]] = {}
        addresses: dict[int, str] = {}
        for index, rcpt in enumerate(recipients):
            try:
                addresses[index] = names.normalize_address(rcpt)
            except names.InvalidNameError:
                outcomes[index] = RecipientOutcome(rcpt, pb.RECIPIENT_INVALID)
        # Accounts and mailboxes of all recipients in one metadata read (this is the hot path of SMTP).
        resolved = await self.metadata.resolve_delivery(list(addresses.values()), mailbox_name)
        domains: list[str] | None = None
        for (index, address), target in zip(addresses.items(), resolved, strict=True):
            if target is None:
                if domains is None:
                    domains = await self.metadata.list_domains()
                status = pb.RECIPIENT_UNKNOWN if names.domain_of(address) in domains else pb.RECIPIENT_NOT_LOCAL
                outcomes[index] = RecipientOutcome(recipients[index], status)
                continue
            record = target.account
            if record.name in targets:  # the same account twice (alias + address): one copy
                targets[record.name][2].append(index)
                continue
            status = self._quota_status(record, await self._usage_if_limited(record), len(data))
            if status != pb.RECIPIENT_LOCAL:
                outcomes[index] = RecipientOutcome(recipients[index], status, record.name)
                continue
            targets[record.name] = (record, target.mailbox, [index])
        if not targets:
            return [outcomes[i] for i in range(len(recipients))], ""
        message = await self._analyse(data, (), None)
        reserved: list[tuple[AccountRecord, MailboxRecord, list[int]]] = []
        for record, mailbox, indexes in targets.values():
            if await self._reserve(record, message.size, raise_over=False):
                reserved.append((record, mailbox, indexes))
            else:
                for i in indexes:
                    outcomes[i] = RecipientOutcome(recipients[i], pb.RECIPIENT_OVER_QUOTA, record.name)
        if not reserved:
            return [outcomes[i] for i in range(len(recipients))], ""
        try:
            await self.blobs.put(message.blob_key, data)
        except BaseException:
            for record, _, _ in reserved:
                await self._unreserve(record, message.size)
            await self._delete_blobs([message.blob_key])  # a put cut short may land later: the sweeper's
            raise
        write = asyncio.ensure_future(  # noqa: RUF006 (kept in `write`; ruff misreads it)
            self.metadata.deliver([m.id for _, m, _ in reserved], message, self.quota.enforced_by_metadata)
        )
        cancelled: asyncio.CancelledError | None = None
        try:
            results = await settle(write)
        except asyncio.CancelledError as exc:
            if not write.done() or write_failed(write):
                await self._undo_delivery(write, reserved, message)
                raise
            # Committed, and only the caller is gone (SMTP client reset after its final "."): the
            # message is stored, so its events and per-recipient quota go as for any delivery.
            results, cancelled = write.result(), exc
        except BaseException:
            await self._undo_delivery(write, reserved, message)
            raise
        stored = False
        for (record, mailbox, indexes), result in zip(reserved, results, strict=True):
            for i in indexes:
                if isinstance(result, InsertResult):
                    outcomes[i] = RecipientOutcome(
                        recipients[i], pb.RECIPIENT_LOCAL, record.name, result.uid, result.uidvalidity
                    )
                elif isinstance(result, OverQuota):
                    outcomes[i] = RecipientOutcome(recipients[i], pb.RECIPIENT_OVER_QUOTA, record.name)
                else:
                    outcomes[i] = RecipientOutcome(
                        recipients[i], pb.RECIPIENT_TEMP_FAILURE, record.name, detail=str(result)
                    )
            if isinstance(result, InsertResult):
                stored = True
                await self._publish(
                    ChangeEvent(record.name, mailbox.name, "new", (result.uid,), result.modseq, result.uidvalidity)
                )
            else:
                await self._unreserve(record, message.size)
        if not stored:
            await self._delete_blobs([message.blob_key])
        log.info(
            "delivered message_id=%s sender=%s recipients=%d size=%d stored=%s",
            message.blob_key, sender or "<>", len(recipients), message.size, stored,
        )  # fmt: skip
        if cancelled is not None:
            raise cancelled
        return [outcomes[i] for i in range(len(recipients))], message.blob_key if stored else ""

    async def _undo_delivery(
        self,
        write: asyncio.Future[Any],
        reserved: Sequence[tuple[AccountRecord, MailboxRecord, list[int]]],
        message: NewMessage,
    ) -> None:
        """After a delivery's metadata write failed or was left running: the blob and the quota
        reservations go only when the write certainly committed nothing (see settle)."""
        if not write_failed(write):
            self._quota_suspect = True  # not known whether the reservations are used
            return
        for record, _, _ in reserved:
            await self._unreserve(record, message.size)
        await self._delete_blobs([message.blob_key])

    async def _reserve(self, record: AccountRecord, size: int, raise_over: bool = True) -> bool:
        if self.quota.enforced_by_metadata:
            return True
        try:
            ok = await self.quota.reserve(record.name, size, 1, record.quota_bytes, record.quota_messages)
        except StorageUnavailable as e:
            # While Redis is down, check against the metadata's counters (read with the record) and
            # go on: delivery continues; the Redis counters miss this message until repair_quota.
            log.warning("quota reserve unavailable (%s); checked %s against the metadata", e, record.name)
            self._quota_suspect = True  # the counters miss this message: recomputed once Redis is back
            usage = QuotaUsage(record.used_bytes, record.used_messages)
            ok = self._quota_status(record, usage, size) == pb.RECIPIENT_LOCAL
        if not ok and raise_over:
            raise OverQuota(f"{record.name} is over quota")
        return ok

    async def _unreserve(self, record: AccountRecord, size: int, count: int = 1) -> None:
        if self.quota.enforced_by_metadata:
            return
        try:
            await self.quota.release(record.name, size, count)
        except StorageError:
            log.warning("quota release failed for %s; recomputed once the quota store is back", record.name)
            self._quota_suspect = True

    # ------------------------------------------------------------ reading messages

    async def fetch_metadata(
        self, account: str, mailbox_name: str, uids: UidRanges | None, changed_since: int = 0
    ) -> tuple[MailboxRecord, list[MessageRecord]]:
        """The mailbox (its uidvalidity) and the records: a mailbox deleted and created again has a
        new id, so the records always belong to the uidvalidity returned with them."""
        mailbox = await self._read_mailbox(account, mailbox_name)
        if uids is None and mailbox.uidnext <= SMALL_MAILBOX:
            # Every UID is below uidnext: naming the range lets the store read a small mailbox
            # on the event loop instead of in a thread (a POP3 login, an IMAP SELECT).
            uids = [(1, max(1, mailbox.uidnext - 1))]
        return mailbox, await self.metadata.fetch(mailbox.id, uids, changed_since)

    async def _read_mailbox(self, account: str, mailbox_name: str) -> MailboxRecord:
        """core.mailbox() for calls that need only the mailbox (bodies, metadata, status, search,
        flags), one metadata read fewer: an account's id never changes and is never reused
        (AUTOINCREMENT), and deleting an account deletes its mailboxes, so a remembered id either
        finds the mailbox or fails, and a failure asks again by name, which gives the right error."""
        name = _address(account)
        account_id = self._account_ids.get(name)
        if account_id is not None:
            try:
                return await self.metadata.get_mailbox(account_id, _mailbox_name(mailbox_name))
            except MailboxNotFound:
                self._account_ids.pop(name, None)  # a concurrent read may have dropped it already
        record, mailbox = await self.mailbox(account, mailbox_name)
        if len(self._account_ids) >= ACCOUNT_ID_CACHE:
            self._account_ids.clear()  # bounded; refilled one read at a time
        self._account_ids[name] = record.id
        return mailbox

    async def fetch_body(
        self, account: str, mailbox_name: str, uid: int, section: pb.Section, partial: tuple[int, int] | None
    ) -> BodySlice:
        """A section of one message, streamed from the blob store by range reads."""
        mailbox = await self._read_mailbox(account, mailbox_name)
        records = await self.metadata.fetch(mailbox.id, [(uid, uid)])
        if not records:
            raise MailboxNotFound(f"no message with UID {uid}") from None
        record = records[0]
        return await self._section_slice(record, pb.BodyPart.FromString(record.structure), section, partial, None)

    async def fetch_bodies(
        self,
        account: str,
        mailbox_name: str,
        uids: UidRanges,
        wanted: Sequence[tuple[pb.Section, tuple[int, int] | None]],
        max_bytes: int = 0,
    ) -> AsyncIterator[tuple[MessageRecord, int, BodySlice]]:
        """(message, section index, slice) of each wanted (section, partial) of each existing message of
        `uids`, in UID order: one metadata read for the set, then blob reads, FETCH_BODIES_CONCURRENCY
        at a time and ahead of the consumer. A small message is read whole once for all its sections.
        With `max_bytes`, only the messages (the first always) whose sizes add up to at most that."""
        mailbox = await self._read_mailbox(account, mailbox_name)
        # Only top-level header sections (a client's message list): served from the header block
        # kept in the metadata for SEARCH, no blob read at all.
        headers_only = all(not s.part and s.text in _HEADER_TEXTS for s, _ in wanted)
        records = await self.metadata.fetch(mailbox.id, uids, with_header=headers_only) if wanted else []
        if max_bytes and records:
            total, cut = records[0].size, 1
            while cut < len(records) and total + records[cut].size <= max_bytes:
                total += records[cut].size
                cut += 1
            records = records[:cut]
        limit = asyncio.Semaphore(FETCH_BODIES_CONCURRENCY)

        async def whole(record: MessageRecord) -> bytes:
            async with limit:
                return await self.blobs.get(record.blob_key)

        # Reads for small messages start ahead (bounded by the window) while earlier ones are sent,
        # unless the store reads locally.
        local = self.blobs.local_reads
        window = 2 * FETCH_BODIES_CONCURRENCY
        reads: dict[int, asyncio.Task[bytes]] = {}
        try:
            for i, record in enumerate(records):
                structure = pb.BodyPart.FromString(record.structure)
                raw: bytes | None = None
                try:
                    if headers_only and structure.header_offset == 0 and len(record.header) == structure.body_offset:
                        raw = record.header
                    elif local and record.size <= WHOLE_BLOB_READ and not headers_only:
                        raw = await self.blobs.get(record.blob_key)  # microseconds: no task per read
                    else:
                        for ahead in records[i : i + window]:
                            if ahead.size <= WHOLE_BLOB_READ and ahead.uid not in reads and not headers_only:
                                reads[ahead.uid] = asyncio.ensure_future(whole(ahead))
                        read = reads.pop(record.uid, None)
                        raw = await read if read is not None else None
                    slices = [
                        await self._section_slice(record, structure, section, partial, raw)
                        for section, partial in wanted
                    ]
                except BlobNotFound:
                    # A broken message (a row without its body) must not fail the whole mailbox:
                    # it is reported missing and the others still come.
                    _log_missing(mailbox, record)
                    slices = [BodySlice(0, _chunks(b""), missing=True) for _ in wanted]
                for index, body in enumerate(slices):
                    yield record, index, body
        finally:
            for task in reads.values():  # the caller stopped early (client gone) or a read failed
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not log it as lost
                task.cancel()

    async def _section_slice(
        self,
        record: MessageRecord,
        structure: pb.BodyPart,
        section: pb.Section,
        partial: tuple[int, int] | None,
        raw: bytes | None,
    ) -> BodySlice:
        """The section rules (RFC 3501 §6.4.5) for one message; from `raw` when it holds the bytes the section
        needs (the whole blob, or the header block for a header section), else by a range read
        (streamed when over one chunk)."""
        try:
            plan = sections.plan_section(structure, section)
        except sections.SectionNotFound:
            return BodySlice(0, _chunks(b""))

        async def read(start: int, end: int) -> bytes:
            return raw[start:end] if raw is not None else await self.blobs.get(record.blob_key, start, end)

        if plan.header_filter is not None:
            fields, exclude = plan.header_filter
            data = sections.apply_header_filter(await read(plan.start, plan.end), fields, exclude)
            if partial is not None:
                data = data[partial[0] : partial[0] + partial[1]]
            return BodySlice(len(data), _chunks(data))
        start, end = plan.start, plan.end
        if partial is not None:
            start = min(end, start + partial[0])
            end = min(end, start + partial[1])
        if end <= start:
            return BodySlice(0, _chunks(b""))
        # A top-level section starts and ends at line ends, so it keeps the message's CRLF property.
        crlf = structure.crlf and partial is None and not section.part
        if raw is not None or end - start <= BODY_CHUNK:
            data = await read(start, end)
            return BodySlice(len(data), _chunks(data), crlf)
        return BodySlice(end - start, self.blobs.stream(record.blob_key, start, end, BODY_CHUNK), crlf)

    async def search(self, account: str, mailbox_name: str, key: pb.SearchKey) -> tuple[list[int], int]:
        mailbox = await self._read_mailbox(account, mailbox_name)
        records = await self.metadata.fetch(mailbox.id, None, with_header=True)
        max_uid = records[-1].uid if records else 0
        with_body = search.needs_body(key)
        limit = asyncio.Semaphore(SEARCH_BODY_CONCURRENCY)
        bodies: dict[int, bytes] = {}

        async def load(r: MessageRecord) -> None:
            async with limit:
                try:
                    bodies[r.uid] = await self.blobs.get(r.blob_key)
                except BlobNotFound:  # a broken message matches no body text; the others are searched
                    _log_missing(mailbox, r)
                    bodies[r.uid] = b""

        # Bodies are read a batch at a time (memory: a batch, not the mailbox), and the loop is
        # given back every SEARCH_SLICE seconds: a SEARCH of a big mailbox, or with many keys, is
        # linear in messages x keys but never holds every other call of every account meanwhile.
        hits: list[MessageRecord] = []
        slice_end = time.monotonic() + SEARCH_SLICE
        for start in range(0, len(records), SEARCH_BATCH):
            batch = records[start : start + SEARCH_BATCH]
            bodies.clear()
            if with_body:
                await asyncio.gather(*(load(r) for r in batch))
            for seq, r in enumerate(batch, start + 1):
                if time.monotonic() > slice_end:
                    await asyncio.sleep(0)
                    slice_end = time.monotonic() + SEARCH_SLICE
                try:
                    if search.matches(key, r, seq, max_uid, bodies.get(r.uid), max_seq=len(records)):
                        hits.append(r)
                except ValueError as e:
                    raise InvalidRequest(f"bad search key: {e}") from None
        return [r.uid for r in hits], max((r.modseq for r in hits), default=0)

    # ------------------------------------------------------------ changing messages

    async def store_flags(
        self,
        account: str,
        mailbox_name: str,
        uids: UidRanges,
        mode: StoreMode,
        flags: Sequence[str],
        unchanged_since: int | None,
    ) -> tuple[list[FlagUpdate], list[int]]:
        mailbox = await self._read_mailbox(account, mailbox_name)
        updated, failed = await self.metadata.store_flags(
            mailbox.id, uids, mode, normalize_flags(flags), unchanged_since
        )
        if updated:
            top = max(u.modseq for u in updated)
            await self._publish(  # _address() is the account's name as stored (lower-cased)
                ChangeEvent(
                    _address(account), mailbox.name, "flags", tuple(u.uid for u in updated), top, mailbox.uidvalidity
                )
            )
        return updated, failed

    async def copy(self, account: str, mailbox_name: str, uids: UidRanges, destination: str, move: bool) -> CopyResult:
        record, source = await self.mailbox(account, mailbox_name)
        target = await self.metadata.get_mailbox(record.id, _mailbox_name(destination))
        if target.id == source.id and move:
            raise NotAllowed("cannot move a message into its own mailbox")
        size = count = 0
        if not move and not self.quota.enforced_by_metadata:
            picked = await self.metadata.fetch(source.id, uids)
            size, count = sum(r.size for r in picked), len(picked)
            if count and not await self.quota.reserve(
                record.name, size, count, record.quota_bytes, record.quota_messages
            ):
                raise OverQuota(f"{record.name} is over quota")
        try:
            result = await self.metadata.copy(source.id, uids, target.id, move, self.quota.enforced_by_metadata)
        except BaseException:
            if count:
                await self._unreserve(record, size, count)
            raise
        if result.mapping:
            dest_uids = tuple(d for _, d in result.mapping)
            await self._publish(
                ChangeEvent(record.name, target.name, "new", dest_uids, result.destination_modseq, result.uidvalidity)
            )
        if result.expunged:
            await self._publish(
                ChangeEvent(
                    record.name, source.name, "expunge", result.expunged, result.source_modseq, source.uidvalidity
                )
            )
        return result

    async def expunge(self, account: str, mailbox_name: str, uids: UidRanges | None) -> ExpungeResult:
        record, mailbox = await self.mailbox(account, mailbox_name)
        result = await self.metadata.expunge(mailbox.id, uids)
        await self._after_expunge(record, result)
        if result.expunged:
            await self._publish(
                ChangeEvent(record.name, mailbox.name, "expunge", result.expunged, result.modseq, mailbox.uidvalidity)
            )
        return result

    async def _after_expunge(self, record: AccountRecord, result: ExpungeResult) -> None:
        if result.freed_messages:
            await self._unreserve(record, result.freed_bytes, result.freed_messages)
        await self._delete_blobs(result.freed_blobs)

    # ------------------------------------------------------------ changes, leases

    async def changes_since(
        self, account: str, mailbox_name: str, modseq: int
    ) -> tuple[MailboxRecord, list[ChangeRecord], int]:
        """The changes after `modseq`, and the MODSEQ up to which expunges may be missing (the log
        was pruned): read after the changes, so a prune in between is never missed."""
        mailbox = await self._read_mailbox(account, mailbox_name)
        changes = await self.metadata.changes_since(mailbox.id, modseq)
        return mailbox, changes, await self.metadata.pruned_modseq(mailbox.id)

    async def watch(self, account: str) -> Subscription:
        record = await self.account(account)
        return await self.events.subscribe(record.name)

    async def acquire_lease(self, name: str, holder: str, ttl: int) -> tuple[bool, str]:
        if not name or not holder or not 1 <= ttl <= 3600:
            raise InvalidRequest("lease needs a name, a holder and a ttl of 1..3600 s")
        return await self.metadata.acquire_lease(name, holder, ttl)

    async def release_lease(self, name: str, holder: str) -> None:
        await self.metadata.release_lease(name, holder)

    # ------------------------------------------------------------ blobs and events

    async def _publish(self, event: ChangeEvent) -> None:
        # Events are hints: a bus failure must not fail a committed operation.
        try:
            await self.events.publish(event)
        except StorageError as e:
            log.warning("event not published (%s): %s", e, event)

    async def _delete_blobs(self, keys: Sequence[str]) -> None:
        # A few at a time: one S3 DELETE after the other made an EXPUNGE of many messages slow.
        limit = asyncio.Semaphore(BLOB_DELETE_CONCURRENCY)

        async def one(key: str) -> None:
            async with limit:
                try:
                    await self.blobs.delete(key)
                except StorageError:
                    log.warning("blob %s not deleted now; the orphan sweeper will remove it", key)

        await asyncio.gather(*(one(key) for key in keys))

    async def sweep_orphans(self, min_age_seconds: float | None = None) -> int:
        """Remove blobs no message references (left by a crash between blob and metadata write)."""
        min_age = self.settings.orphan_min_age_seconds if min_age_seconds is None else min_age_seconds
        cutoff = time.time() - min_age
        removed = 0
        async for key, mtime in self.blobs.list_keys():
            if mtime > cutoff or await self.metadata.blob_referenced(key):
                continue
            await self.blobs.delete(key)
            removed += 1
        if removed:
            log.info("orphan sweeper removed %d blobs", removed)
        return removed

    async def prune_change_log(self, now: float | None = None) -> int:
        """Forget expunges older than change_log_days (QRESYNC clients older than that resync by
        UID ranges instead)."""
        days = self.settings.change_log_days
        if days <= 0:
            return 0
        pruned = await self.metadata.prune_changes((time.time() if now is None else now) - days * 86400)
        if pruned:
            log.info("change log: %d expunges older than %d days pruned", pruned, days)
        return pruned

    async def repair_quota(self) -> int:
        """Recompute every account's counters when they may be wrong: after a failed reserve or
        release (Redis was down), or when the quota store lost them (a Redis restarted empty).
        Returns the accounts recomputed (0: nothing to do). A delivery between an account's
        recompute and its reserve can be missed by the counter: the quota errs on the lenient side
        by that message until the next recompute."""
        if not self._quota_suspect and await self.quota.intact():
            return 0
        self._quota_suspect = False  # a failure from here on sets it again
        try:
            records = await self.recompute_quota()
            await self.quota.mark_intact()
        except BaseException:
            self._quota_suspect = True
            raise
        log.info("quota counters recomputed for %d accounts", len(records))
        return len(records)

    async def _watch_quota_forever(self) -> None:
        while True:
            try:
                await self.repair_quota()
            except StorageUnavailable as e:
                log.debug("quota store still unavailable: %s", e)
            except Exception:
                log.exception("quota repair failed")
            await asyncio.sleep(QUOTA_WATCH_SECONDS)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.orphan_sweep_seconds)
            try:
                await self.sweep_orphans()
                await self.prune_change_log()
            except StorageUnavailable as e:
                log.warning("orphan sweep skipped: %s", e)
            except Exception:
                log.exception("orphan sweep failed")


def _log_missing(mailbox: MailboxRecord, record: MessageRecord) -> None:
    log.error(
        "message without its body: mailbox_id=%d mailbox=%s uid=%d blob=%s; `mailstack fsck --repair` expunges it",
        mailbox.id, mailbox.name, record.uid, record.blob_key,
    )  # fmt: skip


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), BODY_CHUNK):
        yield data[i : i + BODY_CHUNK]
