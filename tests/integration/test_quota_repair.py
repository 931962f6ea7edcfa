"""Redis quota counters mended after an outage: deliveries go on while Redis is down (checked
against the metadata's counters), and once it is back, empty or not, the mailstore recomputes them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.quota.base import QuotaUsage
from mailstack.storage.quota.redis import RedisQuotaStore
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import deliver, running_mailstore, settings_for
from tests.fixtures.redis_server import RedisServer

ALICE = "alice@example.test"


def message(n: int) -> bytes:
    return b"Subject: quota %d\r\n\r\n%s\r\n" % (n, b"q" * (100 * n))


@pytest.fixture
async def store(restartable_redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[tuple[Any, Any, RedisServer]]:
    settings = settings_for(tmp_path, quota_url=restartable_redis_server.url, orphan_sweep_seconds=0)
    async with running_mailstore(settings) as (server, client):
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password="x" * 12, quota_bytes=10**6))
        yield server, client, restartable_redis_server


async def repaired(server: Any) -> int:
    """repair_quota as the mailstore's watch runs it: again after a failure (the first call on a
    pooled connection to a Redis that restarted fails, and the pool then reconnects)."""
    for _ in range(3):
        try:
            return int(await server.core.maintenance.repair_quota())
        except StorageUnavailable:
            continue
    raise AssertionError("the quota store stayed unavailable")


async def counters(url: str) -> QuotaUsage:
    quota = RedisQuotaStore(url)
    try:
        return await quota.usage(ALICE)
    finally:
        await quota.close()


async def test_counters_recomputed_after_an_outage(store: tuple[Any, Any, RedisServer]) -> None:
    server, client, redis_server = store
    sizes = []
    for n in (1, 2):
        await deliver(client, [ALICE], message(n))
        sizes.append(len(message(n)))
    assert await counters(redis_server.url) == QuotaUsage(sum(sizes), 2)
    redis_server.stop()
    await deliver(client, [ALICE], message(3))  # goes on, checked against the metadata
    sizes.append(len(message(3)))
    redis_server.start()  # back, and empty (no persistence)
    assert await counters(redis_server.url) == QuotaUsage(0, 0)
    assert await repaired(server) >= 1
    assert await counters(redis_server.url) == QuotaUsage(sum(sizes), 3)
    assert await server.core.maintenance.repair_quota() == 0, "nothing to do while the counters are whole"


async def test_a_redis_restarted_empty_is_noticed_without_a_failed_call(store: tuple[Any, Any, RedisServer]) -> None:
    server, client, redis_server = store
    await deliver(client, [ALICE], message(1))
    await repaired(server)  # the marker is set (the watch may have done it at start)
    redis_server.stop()
    redis_server.start()  # nobody called Redis meanwhile: only the missing marker tells
    assert await repaired(server) >= 1
    assert await counters(redis_server.url) == QuotaUsage(len(message(1)), 1)
