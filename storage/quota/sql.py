"""The embedded quota: the metadata store keeps the counters and checks the limits in the
transaction that inserts a message, so there is nothing to reserve or release here."""

from __future__ import annotations

from mailstack.storage.errors import AccountNotFound
from mailstack.storage.metadata.base import MetadataStore
from mailstack.storage.quota.base import QuotaUsage


class SqlQuotaStore:
    enforced_by_metadata = True

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    async def reserve(self, account: str, size: int, count: int, limit_bytes: int, limit_messages: int) -> bool:
        return True  # metadata.insert_message(enforce_quota=True) raises OverQuota instead

    async def release(self, account: str, size: int, count: int) -> None:
        return None  # expunge lowers the metadata counters in its own transaction

    async def usage(self, account: str) -> QuotaUsage:
        record = await self._metadata.get_account(account)
        if record is None:
            raise AccountNotFound(account)
        return QuotaUsage(bytes=record.used_bytes, messages=record.used_messages)

    async def set_usage(self, account: str, usage: QuotaUsage) -> None:
        return None  # metadata.recompute_usage already wrote the counters

    async def intact(self) -> bool:
        return True  # the counters live in the same transactions as the messages

    async def mark_intact(self) -> None:
        return None

    async def close(self) -> None:
        return None  # the metadata store is owned (and closed) by the caller
