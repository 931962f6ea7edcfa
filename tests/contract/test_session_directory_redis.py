"""The session directory contract on a real Valkey (shared by every mailstore replica), and its outage."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.sessions.base import KickOrder
from mailstack.storage.sessions.redis import RedisSessionDirectory

from tests.contract.session_directory_contract import SessionDirectoryContract, record
from tests.fixtures.ports import free_port


class TestRedisSessionDirectory(SessionDirectoryContract):
    @pytest.fixture
    async def directory(self, redis_url: str) -> AsyncIterator[RedisSessionDirectory]:
        directory = RedisSessionDirectory(redis_url)
        yield directory
        await directory.close()


async def test_a_down_redis_is_storage_unavailable_not_a_hang() -> None:
    directory = RedisSessionDirectory(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(StorageUnavailable):
            await directory.report("f", [record("f", "a@x.test")], 30)
        with pytest.raises(StorageUnavailable):
            await directory.sessions()
        with pytest.raises(StorageUnavailable):
            await directory.kick(KickOrder("a@x.test", "", 1.0), 30)
        with pytest.raises(StorageUnavailable):
            await directory.kicks()
    finally:
        await directory.close()
