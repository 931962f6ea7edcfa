"""Storing new messages: SMTP/LMTP delivery to several recipients sharing one blob, IMAP APPEND,
and the body writes of the outbound queue.

Blob first, then the metadata transaction, then events; the caller is acknowledged only after
both writes. A metadata write that follows a blob write is settled even when the caller is
cancelled (settle/write_failed): the blob is deleted only when the write certainly committed
nothing, so there is never a message without its body (issue 13).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from mailstack.message import mime, names
from mailstack.message.line_endings import to_crlf
from mailstack.services.common.config import Settings
from mailstack.services.common.metrics import DELIVERIES
from mailstack.services.mailstore.core import subaddress
from mailstack.services.mailstore.core.changes import normalize_flags
from mailstack.services.mailstore.core.errors import InvalidRequest, OverQuota, TooBig
from mailstack.services.mailstore.core.quota import QuotaLedger, quota_verdict
from mailstack.services.mailstore.core.results import (
    AccountRecord,
    ChangeEvent,
    InsertResult,
    MailboxRecord,
    RecipientOutcome,
    RecipientVerdict,
)
from mailstack.services.mailstore.core.stores import Stores, checked_mailbox_name
from mailstack.storage.metadata.base import DeliveryTarget, NewMessage
from mailstack.storage.metadata.rules import INBOX

log = logging.getLogger("mailstack.mailstore")
T = TypeVar("T")

PARSE_IN_THREAD = 256 * 1024  # messages over this size are parsed off the event loop
POP3_UIDL = re.compile(r"[\x21-\x7e]{1,70}")  # RFC 1939 §7: 1..70 characters 0x21..0x7E


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


@dataclass(slots=True)
class _Target:
    """One account a delivery stores into, and the recipients (indexes) that lead to it."""

    account: AccountRecord
    mailbox: MailboxRecord
    indexes: list[int]


# mailstack_deliveries_total{result}: one per recipient of a local delivery
DELIVERY_RESULTS = {verdict: verdict.value for verdict in RecipientVerdict} | {RecipientVerdict.LOCAL: "delivered"}


def _in_order(outcomes: dict[int, RecipientOutcome], recipients: Sequence[str]) -> list[RecipientOutcome]:
    return [outcomes[i] for i in range(len(recipients))]


def _outcome(recipient: str, account: str, result: InsertResult | Exception) -> RecipientOutcome:
    if isinstance(result, InsertResult):
        return RecipientOutcome(recipient, RecipientVerdict.LOCAL, account, result.uid, result.uidvalidity)
    if isinstance(result, OverQuota):
        return RecipientOutcome(recipient, RecipientVerdict.OVER_QUOTA, account)
    return RecipientOutcome(recipient, RecipientVerdict.TEMP_FAILURE, account, detail=str(result))


class Delivery:
    def __init__(self, stores: Stores, settings: Settings, ledger: QuotaLedger) -> None:
        self.stores = stores
        self.settings = settings
        self.ledger = ledger

    def check_size(self, size: int) -> None:
        if size > self.settings.max_message_size:
            raise TooBig(f"message of {size} bytes is over the limit of {self.settings.max_message_size}")
        if size == 0:
            raise InvalidRequest("empty message")

    def _kept(self, data: bytes) -> bytes | None:
        """The body when it is kept in the metadata transaction (ADR 0045), else None (blob first)."""
        return data if len(data) <= self.stores.kept_body_bytes else None

    @staticmethod
    async def _canonical(data: bytes) -> bytes:
        """Every line ended by CRLF (ADR 0020): done here, at the one door every message comes
        through (APPEND, import, SMTP/LMTP and Send delivery), so that what is stored, counted
        against the quota and announced as a size is exactly what every protocol sends."""
        return await asyncio.to_thread(to_crlf, data) if len(data) > PARSE_IN_THREAD else to_crlf(data)

    async def _analyse(
        self, data: bytes, flags: tuple[str, ...], when: datetime | None, blob_key: str = ""
    ) -> NewMessage:
        # Parsing a big message is CPU work: keep it off the event loop.
        parse = mime.parse_message
        parsed = await asyncio.to_thread(parse, data) if len(data) > PARSE_IN_THREAD else parse(data)
        if when is None:
            when = datetime.now().astimezone()
        offset = when.utcoffset()
        return NewMessage(
            blob_key=blob_key or new_blob_key(),
            size=len(data),
            internal_date=int(when.timestamp()),
            tz_offset=int(offset.total_seconds() // 60) if offset else 0,
            flags=flags,
            envelope=parsed.envelope.SerializeToString(),
            structure=parsed.structure.SerializeToString(),
            header=parsed.header,
            sent_date=parsed.sent_date,
        )

    async def _put_blob(
        self,
        key: str,
        data: bytes,
        reserved: Sequence[AccountRecord],
        size: int,
        started: Awaitable[None] | None = None,
    ) -> None:
        """The body first (or the put `started` earlier); a failed or cancelled put gives the
        reservations back."""
        try:
            await (started if started is not None else self.stores.blobs.put(key, data))
        except BaseException:
            for record in reserved:
                await self.ledger.release(record, size)
            await self.stores.delete_blobs([key])  # a put cut short may land later: the sweeper's
            raise

    async def _drop_early_put(self, put: asyncio.Future[None], key: str) -> None:
        """Undo a put started ahead of a step that failed (no such mailbox, over quota). It is waited
        for: a put in a thread cannot be stopped midway, and a delete before it lands would leave an
        orphan behind for every APPEND to a missing mailbox. Cancelled meanwhile, the sweeper's."""
        try:
            await asyncio.wait([put])
        finally:
            if put.done() and not put.cancelled():
                put.exception()  # seen: the step's own error is the one to report
            else:
                put.cancel()
            await self.stores.delete_blobs([key])

    async def _announce(self, record: AccountRecord, mailbox: MailboxRecord, result: InsertResult) -> None:
        await self.stores.publish(
            ChangeEvent(record.name, mailbox.name, "new", (result.uid,), result.modseq, result.uidvalidity)
        )

    # ------------------------------------------------------------ APPEND

    async def append(
        self,
        account: str,
        mailbox_name: str,
        data: bytes,
        flags: Sequence[str],
        when: datetime | None,
        kept: tuple[int, str] = (0, ""),
    ) -> InsertResult:
        """kept: (UID, POP3 UIDL) of a message imported from another server (0 and "" = new ones)."""
        uid, pop3_uidl = kept
        if pop3_uidl and not POP3_UIDL.fullmatch(pop3_uidl):
            raise InvalidRequest("a POP3 UIDL is 1..70 characters 0x21..0x7E (RFC 1939 §7)")
        data = await self._canonical(data)
        self.check_size(len(data))
        # The body's put (fsyncs, or an S3 PUT) runs while the mailbox is looked up and the message
        # parsed: a client that APPENDs one message at a time (imapsync) waits for both in a row
        # otherwise. The metadata is still written only once the body is durable.
        key = new_blob_key()
        body = self._kept(data)
        put = None if body is not None else asyncio.ensure_future(self.stores.blobs.put(key, data))
        try:
            record, mailbox = await self.stores.mailbox(account, mailbox_name)
            analysed = await self._analyse(data, normalize_flags(flags), when, key)
            message = replace(analysed, uid=uid, pop3_uidl=pop3_uidl, body=body)
            await self.ledger.reserve(record, message.size)
        except BaseException:
            if put is not None:
                await self._drop_early_put(put, key)
            raise
        if put is not None:
            await self._put_blob(message.blob_key, data, [record], message.size, put)
        write = asyncio.ensure_future(self.stores.metadata.insert_message(mailbox.id, message, self.ledger.by_metadata))
        try:
            result = await settle(write)
        except BaseException:
            if write_failed(write):
                await self.ledger.release(record, message.size)
                await self.stores.delete_blobs([message.blob_key])
            elif not write.done():
                self.ledger.suspect = True  # not known whether the reservation is used
            else:  # committed; only the caller is gone: the message is stored, sessions hear of it
                await self._announce(record, mailbox, write.result())
            raise
        await self._announce(record, mailbox, result)
        return result

    # ------------------------------------------------------------ delivery (SMTP, LMTP, Send)

    async def deliver(
        self, sender: str, recipients: Sequence[str], data: bytes, mailbox_name: str = "INBOX"
    ) -> tuple[list[RecipientOutcome], str]:
        """Store one message for several recipients, sharing one blob; a result per recipient, and
        the stored message's id ("" when no recipient got it)."""
        data = await self._canonical(data)
        self.check_size(len(data))
        outcomes: dict[int, RecipientOutcome] = {}
        targets = await self._targets(recipients, checked_mailbox_name(mailbox_name or "INBOX"), len(data), outcomes)
        if not targets:
            return self._counted(_in_order(outcomes, recipients)), ""
        message = await self._analyse(data, (), None)
        reserved = await self._reserve_all(targets, message.size, recipients, outcomes)
        if not reserved:
            return self._counted(_in_order(outcomes, recipients)), ""
        body = self._kept(data)
        if body is None:
            await self._put_blob(message.blob_key, data, [t.account for t in reserved], message.size)
        message = replace(message, body=body)
        results, cancelled = await self._write_delivery(reserved, message)
        stored = await self._record_results(reserved, results, message.size, recipients, outcomes)
        if not stored:
            await self.stores.delete_blobs([message.blob_key])
        log.info(
            "delivered",
            extra={"message_id": message.blob_key, "sender": f"<{sender}>", "recipients": len(recipients),
                   "size": message.size, "stored": stored},
        )  # fmt: skip
        self._counted(_in_order(outcomes, recipients))
        if cancelled is not None:
            raise cancelled
        return _in_order(outcomes, recipients), message.blob_key if stored else ""

    @staticmethod
    def _counted(outcomes: list[RecipientOutcome]) -> list[RecipientOutcome]:
        for outcome in outcomes:
            DELIVERIES.labels(DELIVERY_RESULTS[outcome.verdict]).inc()
        return outcomes

    @staticmethod
    def _addresses(recipients: Sequence[str], outcomes: dict[int, RecipientOutcome]) -> dict[int, str]:
        addresses: dict[int, str] = {}
        for index, rcpt in enumerate(recipients):
            try:
                addresses[index] = names.normalize_address(rcpt)
            except names.InvalidNameError:
                outcomes[index] = RecipientOutcome(rcpt, RecipientVerdict.INVALID)
        return addresses

    async def _targets(
        self, recipients: Sequence[str], mailbox_name: str, size: int, outcomes: dict[int, RecipientOutcome]
    ) -> dict[str, _Target]:
        """The accounts to store into, by name; every other recipient gets its outcome now."""
        addresses = self._addresses(recipients, outcomes)
        # Accounts and mailboxes of all recipients in one metadata read (this is the hot path of SMTP).
        resolved = await subaddress.resolve_delivery(
            self.stores.metadata, list(addresses.values()), [recipients[i] for i in addresses], mailbox_name,
            self.settings.subaddress_delimiter, self.settings.subaddress_folders,
        )  # fmt: skip
        targets: dict[str, _Target] = {}
        domains: list[str] | None = None
        for (index, address), target in zip(addresses.items(), resolved, strict=True):
            if target is None:
                if domains is None:
                    domains = await self.stores.metadata.list_domains()
                local_domain = names.domain_of(address) in domains
                verdict = RecipientVerdict.UNKNOWN if local_domain else RecipientVerdict.NOT_LOCAL
                outcomes[index] = RecipientOutcome(recipients[index], verdict)
                continue
            record = target.account
            if target.mailbox.name != mailbox_name and mailbox_name != INBOX:
                target = await self._by_special_use(target, mailbox_name)
            if record.name in targets:  # the same account twice (alias + address): one copy
                targets[record.name].indexes.append(index)
                continue
            verdict = quota_verdict(record, await self.ledger.usage_if_limited(record), size)
            if verdict != RecipientVerdict.LOCAL:
                outcomes[index] = RecipientOutcome(recipients[index], verdict, record.name)
                continue
            targets[record.name] = _Target(record, target.mailbox, [index])
        return targets

    async def _by_special_use(self, target: DeliveryTarget, mailbox_name: str) -> DeliveryTarget:
        """A named mailbox the account lacks ("Junk" for quarantine) is the one whose special use
        has that name (RFC 6154: a client may call its \\Junk folder "Spam"), else the INBOX given."""
        wanted = "\\" + mailbox_name.lower()
        for mailbox in await self.stores.metadata.list_mailboxes(target.account.id):
            if wanted in mailbox.special_use.lower().split():
                return DeliveryTarget(target.account, mailbox)
        return target

    async def _reserve_all(
        self, targets: dict[str, _Target], size: int, recipients: Sequence[str], outcomes: dict[int, RecipientOutcome]
    ) -> list[_Target]:
        reserved: list[_Target] = []
        for target in targets.values():
            if await self.ledger.reserve(target.account, size, raise_over=False):
                reserved.append(target)
            else:
                for i in target.indexes:
                    outcomes[i] = RecipientOutcome(recipients[i], RecipientVerdict.OVER_QUOTA, target.account.name)
        return reserved

    async def _write_delivery(
        self, reserved: list[_Target], message: NewMessage
    ) -> tuple[Sequence[InsertResult | Exception], asyncio.CancelledError | None]:
        """The metadata write's per-target results, and the caller's cancellation when it came
        after the write committed (the delivery then completes before it goes on)."""
        write = asyncio.ensure_future(
            self.stores.metadata.deliver([t.mailbox.id for t in reserved], message, self.ledger.by_metadata)
        )
        try:
            return await settle(write), None
        except asyncio.CancelledError as exc:
            if not write.done() or write_failed(write):
                await self._undo_delivery(write, reserved, message)
                raise
            # Committed, and only the caller is gone (SMTP client reset after its final "."): the
            # message is stored, so its events and per-recipient quota go as for any delivery.
            return write.result(), exc
        except BaseException:
            await self._undo_delivery(write, reserved, message)
            raise

    async def _record_results(
        self,
        reserved: list[_Target],
        results: Sequence[InsertResult | Exception],
        size: int,
        recipients: Sequence[str],
        outcomes: dict[int, RecipientOutcome],
    ) -> bool:
        """Each recipient's outcome; an event per stored copy, the quota back for the others.
        Whether any copy was stored."""
        stored = False
        for target, result in zip(reserved, results, strict=True):
            for i in target.indexes:
                outcomes[i] = _outcome(recipients[i], target.account.name, result)
            if isinstance(result, InsertResult):
                stored = True
                await self._announce(target.account, target.mailbox, result)
            else:
                await self.ledger.release(target.account, size)
        return stored

    async def _undo_delivery(
        self, write: asyncio.Future[Any], reserved: Sequence[_Target], message: NewMessage
    ) -> None:
        """After a delivery's metadata write failed or was left running: the blob and the quota
        reservations go only when the write certainly committed nothing (see settle)."""
        if not write_failed(write):
            self.ledger.suspect = True  # not known whether the reservations are used
            return
        for target in reserved:
            await self.ledger.release(target.account, message.size)
        await self.stores.delete_blobs([message.blob_key])

    # ------------------------------------------------------------ bodies outside a mailbox (the outbound queue)

    async def put_body(self, key: str, data: bytes) -> None:
        """A body the caller references elsewhere (a queued message); blob first, reference after."""
        await self.stores.blobs.put(key, data)

    async def delete_bodies(self, keys: Sequence[str]) -> None:
        """Bodies no reference needs any more; a failed delete is left to the orphan sweeper."""
        await self.stores.delete_blobs(keys)
