"""The quota contract on Redis (the counters in Redis, checked by a Lua script), and what only Redis has."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.quota.base import QuotaUsage
from mailstack.storage.quota.redis import RedisQuotaStore

from tests.contract.quota_contract import QuotaStoreContract
from tests.fixtures.redis_server import RedisServer


@pytest.fixture
async def redis_quota(redis_url: str) -> AsyncIterator[RedisQuotaStore]:
    quota = RedisQuotaStore(redis_url)
    yield quota
    await quota.close()


class TestRedisQuotaStore(QuotaStoreContract):
    @pytest.fixture
    def quota_url(self, redis_url: str) -> str:
        return redis_url

    @pytest.fixture
    def metadata_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path / 'm.sqlite3'}"

    async def test_redis_enforces_itself(self, redis_quota: RedisQuotaStore) -> None:
        assert redis_quota.enforced_by_metadata is False

    async def test_redis_release_never_goes_below_zero(self, redis_quota: RedisQuotaStore) -> None:
        assert await redis_quota.reserve("a@example.org", 100, 2, 0, 0)
        await redis_quota.release("a@example.org", 30, 1)
        assert await redis_quota.usage("a@example.org") == QuotaUsage(bytes=70, messages=1)
        await redis_quota.release("a@example.org", 500, 5)
        assert await redis_quota.usage("a@example.org") == QuotaUsage(bytes=0, messages=0)
        await redis_quota.release("never-seen@example.org", 10, 1)
        assert await redis_quota.usage("never-seen@example.org") == QuotaUsage(bytes=0, messages=0)

    async def test_redis_set_usage_overwrites(self, redis_quota: RedisQuotaStore) -> None:
        assert await redis_quota.reserve("a@example.org", 100, 2, 0, 0)
        await redis_quota.set_usage("a@example.org", QuotaUsage(bytes=5000, messages=7))
        assert await redis_quota.usage("a@example.org") == QuotaUsage(bytes=5000, messages=7)
        # Limits apply to the recomputed counters.
        assert not await redis_quota.reserve("a@example.org", 1, 1, 5000, 0)
        assert await redis_quota.reserve("a@example.org", 1, 1, 5001, 8)

    async def test_redis_concurrent_reserves_never_overshoot(self, redis_quota: RedisQuotaStore) -> None:
        results = await asyncio.gather(*(redis_quota.reserve("busy@example.org", 10, 1, 200, 0) for _ in range(50)))
        assert results.count(True) == 20
        assert await redis_quota.usage("busy@example.org") == QuotaUsage(bytes=200, messages=20)

    async def test_redis_script_survives_a_script_flush(self, redis_quota: RedisQuotaStore, redis_url: str) -> None:
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
