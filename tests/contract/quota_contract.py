"""The contract of storage.quota.base.QuotaStore, written once (issue 20).

The backends split the work differently: Redis checks limits in reserve(); the SQL quota leaves
the check to the metadata transaction (enforced_by_metadata). The shared tests therefore go
through `Harness.deliver`, which accounts a message the way the mailstore does for each.
A backend's test class subclasses QuotaStoreContract (or SqlQuotaContract, the SQL quota over
one metadata backend) with two fixtures, `quota_url` and `metadata_url`; both stores are opened
through the registry as the mailstore opens them.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from mailstack.storage.errors import AccountNotFound, OverQuota
from mailstack.storage.metadata.base import MetadataStore, NewMessage
from mailstack.storage.quota.base import QuotaStore, QuotaUsage
from mailstack.storage.quota.sql import SqlQuotaStore
from mailstack.storage.registry import open_metadata_store, open_quota_store

_accounts = itertools.count()
_blobs = itertools.count()


def message(size: int) -> NewMessage:
    return NewMessage(
        blob_key=f"blob-{next(_blobs)}",
        size=size,
        internal_date=1_700_000_000,
        tz_offset=0,
        flags=(),
        envelope=b"",
        structure=b"",
        header=b"Subject: quota\r\n\r\n",
        sent_date=None,
    )


class Harness:
    """A quota store plus how the mailstore creates accounts and accounts a delivery with it."""

    def __init__(self, quota: QuotaStore, metadata: MetadataStore | None) -> None:
        self.quota = quota
        self.metadata = metadata
        self.limits: dict[str, tuple[int, int]] = {}

    async def new_account(self, limit_bytes: int = 0, limit_messages: int = 0) -> str:
        name = f"user{next(_accounts)}@example.org"
        self.limits[name] = (limit_bytes, limit_messages)
        if self.metadata is not None:
            await self.metadata.create_account(name, "x", limit_bytes, limit_messages, [("INBOX", "")])
        return name

    async def deliver(self, account: str, size: int) -> bool:
        """Account one message of `size` bytes; False = over quota."""
        limit_bytes, limit_messages = self.limits[account]
        if not self.quota.enforced_by_metadata:
            return await self.quota.reserve(account, size, 1, limit_bytes, limit_messages)
        assert self.metadata is not None
        assert await self.quota.reserve(account, size, 1, limit_bytes, limit_messages)
        record = await self.metadata.get_account(account)
        assert record is not None
        inbox = await self.metadata.get_mailbox(record.id, "INBOX")
        try:
            await self.metadata.insert_message(inbox.id, message(size), enforce_quota=True)
        except OverQuota:
            await self.quota.release(account, size, 1)
            return False
        return True


class QuotaStoreContract:
    """Every QuotaStore passes these. A subclass provides `quota_url` and `metadata_url`."""

    @pytest.fixture
    async def harness(self, quota_url: str, metadata_url: str) -> AsyncIterator[Harness]:
        metadata = open_metadata_store(metadata_url)
        await metadata.migrate()
        quota = open_quota_store(quota_url, metadata)
        # Redis counts on its own; only the SQL quota needs the accounts in the metadata.
        yield Harness(quota, metadata if quota.enforced_by_metadata else None)
        await quota.close()
        await metadata.close()

    async def test_new_account_uses_nothing(self, harness: Harness) -> None:
        account = await harness.new_account(1000, 10)
        assert await harness.quota.usage(account) == QuotaUsage(bytes=0, messages=0)

    async def test_delivery_within_limits_is_counted(self, harness: Harness) -> None:
        account = await harness.new_account(1000, 10)
        assert await harness.deliver(account, 300)
        assert await harness.deliver(account, 700)  # exactly at the byte limit is allowed
        assert await harness.quota.usage(account) == QuotaUsage(bytes=1000, messages=2)

    async def test_byte_limit_refuses_and_changes_nothing(self, harness: Harness) -> None:
        account = await harness.new_account(1000, 10)
        assert await harness.deliver(account, 600)
        assert not await harness.deliver(account, 401)
        assert await harness.quota.usage(account) == QuotaUsage(bytes=600, messages=1)
        assert await harness.deliver(account, 400)

    async def test_message_limit_refuses_and_changes_nothing(self, harness: Harness) -> None:
        account = await harness.new_account(0, 2)
        assert await harness.deliver(account, 10)
        assert await harness.deliver(account, 10)
        assert not await harness.deliver(account, 1)
        assert await harness.quota.usage(account) == QuotaUsage(bytes=20, messages=2)

    async def test_zero_limits_mean_unlimited(self, harness: Harness) -> None:
        account = await harness.new_account(0, 0)
        for _ in range(5):
            assert await harness.deliver(account, 10_000_000)
        assert await harness.quota.usage(account) == QuotaUsage(bytes=50_000_000, messages=5)

    async def test_accounts_are_counted_apart(self, harness: Harness) -> None:
        alice, bob = await harness.new_account(100, 0), await harness.new_account(100, 0)
        assert await harness.deliver(alice, 100)
        assert await harness.deliver(bob, 100)
        assert await harness.quota.usage(alice) == QuotaUsage(bytes=100, messages=1)


class SqlQuotaContract(QuotaStoreContract):
    """The SQL quota (the counters in the metadata store's accounts), on one metadata backend."""

    @pytest.fixture
    def quota_url(self) -> str:
        return ""

    @pytest.fixture
    def sql_quota(self, harness: Harness) -> tuple[SqlQuotaStore, MetadataStore]:
        assert isinstance(harness.quota, SqlQuotaStore) and harness.metadata is not None
        return harness.quota, harness.metadata

    async def test_sql_leaves_enforcement_to_metadata(self, sql_quota: tuple[SqlQuotaStore, MetadataStore]) -> None:
        sql, metadata = sql_quota
        assert sql.enforced_by_metadata is True
        await metadata.create_account("a@example.org", "x", 100, 1, [("INBOX", "")])
        # reserve/release/set_usage neither check nor move the counters: metadata does.
        assert await sql.reserve("a@example.org", 10_000, 50, 100, 1)
        await sql.release("a@example.org", 10_000, 50)
        await sql.set_usage("a@example.org", QuotaUsage(bytes=123, messages=4))
        assert await sql.usage("a@example.org") == QuotaUsage(bytes=0, messages=0)

    async def test_sql_usage_follows_metadata_counters(self, sql_quota: tuple[SqlQuotaStore, MetadataStore]) -> None:
        sql, metadata = sql_quota
        account = await metadata.create_account("a@example.org", "x", 0, 0, [("INBOX", "")])
        inbox = await metadata.get_mailbox(account.id, "INBOX")
        await metadata.insert_message(inbox.id, message(120), enforce_quota=True)
        await metadata.insert_message(inbox.id, message(30), enforce_quota=False)
        assert await sql.usage("a@example.org") == QuotaUsage(bytes=150, messages=2)
        assert await metadata.recompute_usage(account.id) == (150, 2)
        assert await sql.usage("a@example.org") == QuotaUsage(bytes=150, messages=2)

    async def test_sql_unknown_account(self, sql_quota: tuple[SqlQuotaStore, MetadataStore]) -> None:
        sql, _ = sql_quota
        with pytest.raises(AccountNotFound):
            await sql.usage("nobody@example.org")

    async def test_sql_is_always_intact(self, sql_quota: tuple[SqlQuotaStore, MetadataStore]) -> None:
        sql, _ = sql_quota
        await sql.mark_intact()
        assert await sql.intact()
