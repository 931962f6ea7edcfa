"""The integrity check behind `mailstack fsck`: message rows whose body is missing from the blob
store, and bodies no row references (orphans).

Blob first, metadata second (ARCHITECTURE.md) means a row without its body should never exist;
one did when a cancelled store deleted the body its metadata write still committed (issue 13).
Repair expunges such rows exactly as an IMAP EXPUNGE would (a change-log entry, so QRESYNC
clients see VANISHED; an event, so selected sessions see EXPUNGE; quota released) and deletes
orphans. Orphans younger than the minimum age are not counted: a delivery in flight has written
its body and not yet committed its row (the orphan sweeper uses the same threshold).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from mailstack.services.mailstore.core.changes import after_expunge
from mailstack.services.mailstore.core.quota import QuotaLedger
from mailstack.services.mailstore.core.results import BodyReference, ChangeEvent, IntegrityReport
from mailstack.services.mailstore.core.stores import Stores

log = logging.getLogger("mailstack.mailstore.integrity")

EXISTS_CONCURRENCY = 16  # blob existence checks in flight (an S3 HEAD each)


async def check_integrity(
    stores: Stores, ledger: QuotaLedger, account: str, repair: bool, min_age_seconds: float
) -> IntegrityReport:
    """Rows without bodies (of `account`, or all) and, when every account is checked, orphan
    bodies older than `min_age_seconds`. With `repair`, the broken rows are expunged and the
    orphans deleted."""
    account_id = (await stores.account(account)).id if account else None
    references = await stores.metadata.body_references(account_id)
    present = await _present(stores, {r.blob_key for r in references})
    broken = [r for r in references if r.blob_key not in present]
    if broken:
        # An expunge in between deletes the row, then the body: only rows still there are broken.
        still = {(r.mailbox_id, r.uid) for r in await stores.metadata.body_references(account_id)}
        broken = [r for r in broken if (r.mailbox_id, r.uid) in still]
    orphans: list[str] = []
    blobs_checked = 0
    if not account:
        cutoff = time.time() - min_age_seconds
        async for key, mtime in stores.blobs.list_keys():
            blobs_checked += 1
            if mtime <= cutoff and not await stores.metadata.blob_referenced(key):
                orphans.append(key)
    for r in broken:
        log.warning(
            "fsck: message without its body",
            extra={"account": r.account, "mailbox": r.mailbox, "uid": r.uid, "blob": r.blob_key},
        )
    if orphans:
        log.warning("fsck: bodies without a message", extra={"count": len(orphans)})
    if repair:
        await _expunge_broken(stores, ledger, broken)
        await _delete_orphans(stores, orphans)
    return IntegrityReport(broken, orphans, len(references), blobs_checked, repair)


async def _present(stores: Stores, keys: set[str]) -> set[str]:
    limit = asyncio.Semaphore(EXISTS_CONCURRENCY)
    found: set[str] = set()

    async def one(key: str) -> None:
        async with limit:
            if await stores.blobs.exists(key):
                found.add(key)

    await asyncio.gather(*(one(k) for k in keys))
    return found


async def _expunge_broken(stores: Stores, ledger: QuotaLedger, broken: list[BodyReference]) -> None:
    by_mailbox: dict[tuple[str, int, str, int], list[int]] = defaultdict(list)
    for r in broken:
        by_mailbox[(r.account, r.mailbox_id, r.mailbox, r.uidvalidity)].append(r.uid)
    for (account, mailbox_id, mailbox, uidvalidity), uids in by_mailbox.items():
        record = await stores.account(account)
        # Rows first, blobs after (after_expunge): never a listed message whose body went first.
        result = await stores.metadata.remove_messages(mailbox_id, uids)
        await after_expunge(stores, ledger, record, result)
        if result.expunged:
            await stores.publish(
                ChangeEvent(record.name, mailbox, "expunge", result.expunged, result.modseq, uidvalidity)
            )
            log.warning(
                "fsck: broken messages expunged",
                extra={"count": len(result.expunged), "account": account, "mailbox": mailbox},
            )


async def _delete_orphans(stores: Stores, orphans: list[str]) -> None:
    for key in orphans:
        if await stores.metadata.blob_referenced(key):  # referenced since the check (a copy, a re-delivery)
            continue
        await stores.blobs.delete(key)
    if orphans:
        log.warning("fsck: orphan bodies deleted", extra={"count": len(orphans)})
