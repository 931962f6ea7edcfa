"""QuotaStore contract, run against every backend (redis, sql).

The two backends split the work differently: Redis checks limits in reserve(); the SQL quota
leaves the check to the metadata transaction (enforced_by_metadata). The shared tests therefore
go through `Harness.deliver`, which accounts a message the way the mailstore does for each.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mailstack.storage.errors import AccountNotFound, OverQuota, StorageUnavailable
from mailstack.storage.metadata.base import MetadataStore, NewMessage
from mailstack.storage.quota.base import QuotaStore, QuotaUsage
from mailstack.storage.quota.redis import RedisQuotaStore
from mailstack.storage.quota.sql import SqlQuotaStore
from mailstack.storage.registry import open_metadata_store

from tests.fixtures.redis_server import RedisServer

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


async def open_sql(tmp_path: Path) -> tuple[SqlQuotaStore, MetadataStore]:
    metadata = open_metadata_store("sqlite://" + str(tmp_path / "m.sqlite3"))
    await metadata.migrate()
    return SqlQuotaStore(metadata), metadata


@pytest.fixture(params=["redis", "sql"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "redis":
        quota = RedisQuotaStore(request.getfixturevalue("redis_url"))
        yield Harness(quota, None)
        await quota.close()
    else:
        sql, metadata = await open_sql(tmp_path)
        yield Harness(sql, metadata)
        await sql.close()
        await metadata.close()


# ---- the contract, every backend


async def test_new_account_uses_nothing(harness: Harness) -> None:
    account = await harness.new_account(1000, 10)
    assert await harness.quota.usage(account) == QuotaUsage(bytes=0, messages=0)


async def test_delivery_within_limits_is_counted(harness: Harness) -> None:
    account = await harness.new_account(1000, 10)
    assert await harness.deliver(account, 300)
    assert await harness.deliver(account, 700)  # exactly at the byte limit is allowed
    assert await harness.quota.usage(account) == QuotaUsage(bytes=1000, messages=2)


async def test_byte_limit_refuses_and_changes_nothing(harness: Harness) -> None:
    account = await harness.new_account(1000, 10)
    assert await harness.deliver(account, 600)
    assert not await harness.deliver(account, 401)
    assert await harness.quota.usage(account) == QuotaUsage(bytes=600, messages=1)
    assert await harness.deliver(account, 400)


async def test_message_limit_refuses_and_changes_nothing(harness: Harness) -> None:
    account = await harness.new_account(0, 2)
    assert await harness.deliver(account, 10)
    assert await harness.deliver(account, 10)
    assert not await harness.deliver(account, 1)
    assert await harness.quota.usage(account) == QuotaUsage(bytes=20, messages=2)


async def test_zero_limits_mean_unlimited(harness: Harness) -> None:
    account = await harness.new_account(0, 0)
    for _ in range(5):
        assert await harness.deliver(account, 10_000_000)
    assert await harness.quota.usage(account) == QuotaUsage(bytes=50_000_000, messages=5)


async def test_accounts_are_counted_apart(harness: Harness) -> None:
    alice, bob = await harness.new_account(100, 0), await harness.new_account(100, 0)
    assert await harness.deliver(alice, 100)
    assert await harness.deliver(bob, 100)
    assert await harness.quota.usage(alice) == QuotaUsage(bytes=100, messages=1)


# ---- redis: the counters live in Redis


@pytest.fixture
async def redis_quota(redis_url: str) -> AsyncIterator[RedisQuotaStore]:
    quota = RedisQuotaStore(redis_url)
    yield quota
    await quota.close()


async def test_redis_enforces_itself(redis_quota: RedisQuotaStore) -> None:
    assert redis_quota.enforced_by_metadata is False


async def test_redis_release_never_goes_below_zero(redis_quota: RedisQuotaStore) -> None:
    assert await redis_quota.reserve("a@example.org", 100, 2, 0, 0)
    await redis_quota.release("a@example.org", 30, 1)
    assert await redis_quota.usage("a@example.org") == QuotaUsage(bytes=70, messages=1)
    await redis_quota.release("a@example.org", 500, 5)
    assert await redis_quota.usage("a@example.org") == QuotaUsage(bytes=0, messages=0)
    await redis_quota.release("never-seen@example.org", 10, 1)
    assert await redis_quota.usage("never-seen@example.org") == QuotaUsage(bytes=0, messages=0)


async def test_redis_set_usage_overwrites(redis_quota: RedisQuotaStore) -> None:
    assert await redis_quota.reserve("a@example.org", 100, 2, 0, 0)
    await redis_quota.set_usage("a@example.org", QuotaUsage(bytes=5000, messages=7))
    assert await redis_quota.usage("a@example.org") == QuotaUsage(bytes=5000, messages=7)
    # Limits apply to the recomputed counters.
    assert not await redis_quota.reserve("a@example.org", 1, 1, 5000, 0)
    assert await redis_quota.reserve("a@example.org", 1, 1, 5001, 8)


async def test_redis_concurrent_reserves_never_overshoot(redis_quota: RedisQuotaStore) -> None:
    results = await asyncio.gather(*(redis_quota.reserve("busy@example.org", 10, 1, 200, 0) for _ in range(50)))
    assert results.count(True) == 20
    assert await redis_quota.usage("busy@example.org") == QuotaUsage(bytes=200, messages=20)


async def test_redis_script_survives_a_script_flush(redis_quota: RedisQuotaStore, redis_url: str) -> None:
    import redis.asyncio

    assert await redis_quota.reserve("a@example.org", 10, 1, 0, 0)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    # EVALSHA answers NOSCRIPT; the store loads the script again.
    assert await redis_quota.reserve("a@example.org", 10, 1, 0, 0)
    assert await redis_quota.usage("a@example.org") == QuotaUsage(bytes=20, messages=2)


async def test_redis_down_is_storage_unavailable(restartable_redis_server: RedisServer) -> None:
    quota = RedisQuotaStore(restartable_redis_server.url)
    try:
        assert await quota.reserve("a@example.org", 10, 1, 0, 0)
        restartable_redis_server.stop()
        async with asyncio.timeout(2.5):
            with pytest.raises(StorageUnavailable):
                await quota.reserve("a@example.org", 10, 1, 0, 0)
            with pytest.raises(StorageUnavailable):
                await quota.usage("a@example.org")
        restartable_redis_server.start()
        assert await quota.reserve("a@example.org", 10, 1, 0, 0)
    finally:
        await quota.close()


# ---- sql: the metadata store keeps the counters


@pytest.fixture
async def sql_quota(tmp_path: Path) -> AsyncIterator[tuple[SqlQuotaStore, MetadataStore]]:
    sql, metadata = await open_sql(tmp_path)
    yield sql, metadata
    await metadata.close()


async def test_sql_leaves_enforcement_to_metadata(sql_quota: tuple[SqlQuotaStore, MetadataStore]) -> None:
    sql, metadata = sql_quota
    assert sql.enforced_by_metadata is True
    await metadata.create_account("a@example.org", "x", 100, 1, [("INBOX", "")])
    # reserve/release/set_usage neither check nor move the counters: metadata does.
    assert await sql.reserve("a@example.org", 10_000, 50, 100, 1)
    await sql.release("a@example.org", 10_000, 50)
    await sql.set_usage("a@example.org", QuotaUsage(bytes=123, messages=4))
    assert await sql.usage("a@example.org") == QuotaUsage(bytes=0, messages=0)


async def test_sql_usage_follows_metadata_counters(sql_quota: tuple[SqlQuotaStore, MetadataStore]) -> None:
    sql, metadata = sql_quota
    account = await metadata.create_account("a@example.org", "x", 0, 0, [("INBOX", "")])
    inbox = await metadata.get_mailbox(account.id, "INBOX")
    await metadata.insert_message(inbox.id, message(120), enforce_quota=True)
    await metadata.insert_message(inbox.id, message(30), enforce_quota=False)
    assert await sql.usage("a@example.org") == QuotaUsage(bytes=150, messages=2)
    assert await metadata.recompute_usage(account.id) == (150, 2)
    assert await sql.usage("a@example.org") == QuotaUsage(bytes=150, messages=2)


async def test_sql_unknown_account(sql_quota: tuple[SqlQuotaStore, MetadataStore]) -> None:
    sql, _ = sql_quota
    with pytest.raises(AccountNotFound):
        await sql.usage("nobody@example.org")


async def test_intact_marker_goes_with_a_redis_that_restarts_empty(restartable_redis_server: RedisServer) -> None:
    quota = RedisQuotaStore(restartable_redis_server.url)
    try:
        assert not await quota.intact(), "never recomputed"
        await quota.mark_intact()
        assert await quota.intact()
        restartable_redis_server.stop()
        with pytest.raises(StorageUnavailable):
            await quota.intact()
        restartable_redis_server.start()  # no persistence: every counter is gone, and the marker
        assert not await quota.intact()
    finally:
        await quota.close()


async def test_sql_is_always_intact(sql_quota: tuple[SqlQuotaStore, MetadataStore]) -> None:
    sql, _ = sql_quota
    await sql.mark_intact()
    assert await sql.intact()
