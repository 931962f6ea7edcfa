"""Quota accounting shared by every use case that adds or frees messages (ADR: quota counters that
drift and repair themselves): reserve before a store, release after a failure or an expunge, and a
`suspect` mark whenever the quota store may have missed a change, so repair() recomputes."""

from __future__ import annotations

import logging

from mailstack.services.common.metrics import QUOTA_REPAIR_PENDING
from mailstack.services.mailstore.core.errors import OverQuota, StorageError, StorageUnavailable
from mailstack.services.mailstore.core.results import AccountRecord, QuotaUsage, RecipientVerdict
from mailstack.services.mailstore.core.stores import Stores

log = logging.getLogger("mailstack.mailstore")


def quota_verdict(record: AccountRecord, usage: QuotaUsage, size: int) -> RecipientVerdict:
    if record.quota_bytes and size > record.quota_bytes:
        return RecipientVerdict.TOO_BIG_FOR_QUOTA
    if record.quota_bytes and usage.bytes + size > record.quota_bytes:
        return RecipientVerdict.OVER_QUOTA
    if record.quota_messages and usage.messages + 1 > record.quota_messages:
        return RecipientVerdict.OVER_QUOTA
    return RecipientVerdict.LOCAL


class QuotaLedger:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self._suspect = False

    @property
    def suspect(self) -> bool:
        """The quota store's counters missed a change (see repair); shown as mailstack_quota_repair_pending."""
        return self._suspect

    @suspect.setter
    def suspect(self, value: bool) -> None:
        self._suspect = value
        QUOTA_REPAIR_PENDING.set(1 if value else 0)

    @property
    def by_metadata(self) -> bool:
        """The metadata store enforces the quota in its own transactions (no separate counters)."""
        return self.stores.quota.enforced_by_metadata

    async def usage(self, record: AccountRecord) -> QuotaUsage:
        if self.by_metadata:
            return QuotaUsage(record.used_bytes, record.used_messages)
        try:
            return await self.stores.quota.usage(record.name)
        except StorageUnavailable as e:
            # Redis down must not stop mail: the metadata store keeps counters of its own (it adds
            # every message's size in the inserting transaction); see reserve.
            log.warning(
                "quota counters unavailable; using the metadata's", extra={"account": record.name, "error": str(e)}
            )
            return QuotaUsage(record.used_bytes, record.used_messages)

    async def usage_if_limited(self, record: AccountRecord) -> QuotaUsage:
        """Usage for a quota check; an account without limits needs none (no Redis round trip)."""
        if not (record.quota_bytes or record.quota_messages):
            return QuotaUsage(0, 0)
        return await self.usage(record)

    async def reserve(self, record: AccountRecord, size: int, raise_over: bool = True) -> bool:
        if self.by_metadata:
            return True
        try:
            ok = await self.stores.quota.reserve(record.name, size, 1, record.quota_bytes, record.quota_messages)
        except StorageUnavailable as e:
            # While Redis is down, check against the metadata's counters (read with the record) and
            # go on: delivery continues; the Redis counters miss this message until repair.
            log.warning(
                "quota reserve unavailable; checked against the metadata",
                extra={"account": record.name, "error": str(e)},
            )
            self.suspect = True  # the counters miss this message: recomputed once Redis is back
            usage = QuotaUsage(record.used_bytes, record.used_messages)
            ok = quota_verdict(record, usage, size) == RecipientVerdict.LOCAL
        if not ok and raise_over:
            raise OverQuota(f"{record.name} is over quota")
        return ok

    async def release(self, record: AccountRecord, size: int, count: int = 1) -> None:
        if self.by_metadata:
            return
        try:
            await self.stores.quota.release(record.name, size, count)
        except StorageError:
            log.warning("quota release failed; recomputed once the quota store is back", extra={"account": record.name})
            self.suspect = True

    async def recompute(self, name: str = "") -> list[AccountRecord]:
        metadata = self.stores.metadata
        records = [await self.stores.account(name)] if name else await metadata.list_accounts()
        out = []
        for record in records:
            used_bytes, used_messages = await metadata.recompute_usage(record.id)
            await self.stores.quota.set_usage(record.name, QuotaUsage(used_bytes, used_messages))
            out.append(await self.stores.account(record.name))
        return out

    async def repair(self) -> int:
        """Recompute every account's counters when they may be wrong: after a failed reserve or
        release (Redis was down), or when the quota store lost them (a Redis restarted empty).
        Returns the accounts recomputed (0: nothing to do). A delivery between an account's
        recompute and its reserve can be missed by the counter: the quota errs on the lenient side
        by that message until the next recompute."""
        if not self.suspect and await self.stores.quota.intact():
            return 0
        self.suspect = False  # a failure from here on sets it again
        try:
            records = await self.recompute()
            await self.stores.quota.mark_intact()
        except BaseException:
            self.suspect = True
            raise
        log.info("quota counters recomputed", extra={"accounts": len(records)})
        return len(records)
