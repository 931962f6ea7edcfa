"""Changing stored messages (flags, copy, move, expunge) and following changes (the change log for
CONDSTORE/QRESYNC, the event stream for IDLE); leases that serialise a maildrop (POP3)."""

from __future__ import annotations

from collections.abc import Sequence

from mailstack.message.flags import is_recent, stored_system_flag
from mailstack.services.mailstore.core.errors import InvalidRequest, OverQuota
from mailstack.services.mailstore.core.quota import QuotaLedger
from mailstack.services.mailstore.core.results import (
    AccountRecord,
    ChangeEvent,
    ChangeRecord,
    CopyResult,
    ExpungeResult,
    FlagUpdate,
    MailboxCounts,
    MailboxRecord,
    StoreMode,
    Subscription,
    UidRanges,
)
from mailstack.services.mailstore.core.stores import Stores, checked_address, checked_mailbox_name

MAX_FLAGS = 100
MAX_FLAG_LENGTH = 100


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


async def after_expunge(stores: Stores, ledger: QuotaLedger, record: AccountRecord, result: ExpungeResult) -> None:
    """Rows first, then their quota and bodies: never a listed message whose body went first."""
    if result.freed_messages:
        await ledger.release(record, result.freed_bytes, result.freed_messages)
    await stores.delete_blobs(result.freed_blobs)


class Changes:
    def __init__(self, stores: Stores, ledger: QuotaLedger) -> None:
        self.stores = stores
        self.ledger = ledger

    async def store_flags(
        self,
        account: str,
        mailbox_name: str,
        uids: UidRanges,
        mode: StoreMode,
        flags: Sequence[str],
        unchanged_since: int | None,
    ) -> tuple[list[FlagUpdate], list[int]]:
        mailbox = await self.stores.read_mailbox(account, mailbox_name)
        updated, failed = await self.stores.metadata.store_flags(
            mailbox.id, uids, mode, normalize_flags(flags), unchanged_since
        )
        if updated:
            top = max(u.modseq for u in updated)
            await self.stores.publish(  # checked_address() is the account's name as stored (lower-cased)
                ChangeEvent(
                    checked_address(account),
                    mailbox.name,
                    "flags",
                    tuple(u.uid for u in updated),
                    top,
                    mailbox.uidvalidity,
                )
            )
        return updated, failed

    async def copy(self, account: str, mailbox_name: str, uids: UidRanges, destination: str, move: bool) -> CopyResult:
        record, source = await self.stores.mailbox(account, mailbox_name)
        target = await self.stores.metadata.get_mailbox(record.id, checked_mailbox_name(destination))
        # RFC 6851 §3.3: MOVE into the same mailbox is allowed (a copy to new UIDs, then an expunge)
        size, count = (0, 0) if move else await self._reserve_copies(record, source, uids)
        try:
            result = await self.stores.metadata.copy(source.id, uids, target.id, move, self.ledger.by_metadata)
        except BaseException:
            if count:
                await self.ledger.release(record, size, count)
            raise
        if result.mapping:
            dest_uids = tuple(d for _, d in result.mapping)
            await self.stores.publish(
                ChangeEvent(record.name, target.name, "new", dest_uids, result.destination_modseq, result.uidvalidity)
            )
        if result.expunged:
            await self.stores.publish(
                ChangeEvent(
                    record.name, source.name, "expunge", result.expunged, result.source_modseq, source.uidvalidity
                )
            )
        return result

    async def _reserve_copies(self, record: AccountRecord, source: MailboxRecord, uids: UidRanges) -> tuple[int, int]:
        """(bytes, messages) reserved in the quota store for a copy (none when the metadata enforces it)."""
        if self.ledger.by_metadata:
            return 0, 0
        picked = await self.stores.metadata.fetch(source.id, uids)
        size, count = sum(r.size for r in picked), len(picked)
        if count and not await self.stores.quota.reserve(
            record.name, size, count, record.quota_bytes, record.quota_messages
        ):
            raise OverQuota(f"{record.name} is over quota")
        return size, count

    async def expunge(self, account: str, mailbox_name: str, uids: UidRanges | None) -> ExpungeResult:
        record, mailbox = await self.stores.mailbox(account, mailbox_name)
        result = await self.stores.metadata.expunge(mailbox.id, uids)
        await after_expunge(self.stores, self.ledger, record, result)
        if result.expunged:
            await self.stores.publish(
                ChangeEvent(record.name, mailbox.name, "expunge", result.expunged, result.modseq, mailbox.uidvalidity)
            )
        return result

    # ------------------------------------------------------------ following changes

    async def changes_since(
        self, account: str, mailbox_name: str, modseq: int
    ) -> tuple[MailboxRecord, list[ChangeRecord], int]:
        """The changes after `modseq`, and the MODSEQ up to which expunges may be missing (the log
        was pruned): read after the changes, so a prune in between is never missed."""
        mailbox = await self.stores.read_mailbox(account, mailbox_name)
        changes = await self.stores.metadata.changes_since(mailbox.id, modseq)
        return mailbox, changes, await self.stores.metadata.pruned_modseq(mailbox.id)

    async def status_and_changes(
        self, account: str, mailbox_name: str, modseq: int
    ) -> tuple[MailboxRecord, MailboxCounts, list[ChangeRecord], int]:
        """changes_since() with the mailbox's status read first (an IMAP index catching up, ADR
        0041): its HIGHESTMODSEQ is then never newer than the changes; the mailbox is read once."""
        mailbox = await self.stores.read_mailbox(account, mailbox_name)
        counts = await self.stores.metadata.mailbox_counts(mailbox.id)
        changes = await self.stores.metadata.changes_since(mailbox.id, modseq)
        return mailbox, counts, changes, await self.stores.metadata.pruned_modseq(mailbox.id)

    async def watch(self, account: str) -> Subscription:
        record = await self.stores.account(account)
        return await self.stores.events.subscribe(record.name)

    # ------------------------------------------------------------ leases

    async def acquire_lease(self, name: str, holder: str, ttl: int) -> tuple[bool, str]:
        if not name or not holder or not 1 <= ttl <= 3600:
            raise InvalidRequest("lease needs a name, a holder and a ttl of 1..3600 s")
        return await self.stores.metadata.acquire_lease(name, holder, ttl)

    async def release_lease(self, name: str, holder: str) -> None:
        await self.stores.metadata.release_lease(name, holder)
