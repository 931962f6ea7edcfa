"""The session directory in Redis, shared by every mailstore replica: one key per frontend process
holding its list (expiring with the report's time to live) and one key per kick order."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio
import redis.exceptions
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.sessions.base import (
    MAX_SESSIONS_PER_REPORT,
    KickOrder,
    SessionRecord,
    records_from_json,
    records_to_json,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

SESSIONS_PREFIX = "mailstack:sessions:"
KICK_PREFIX = "mailstack:kick:"
SCAN_BATCH = 500
_DOWN: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisSessionDirectory:
    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self._client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    async def report(self, frontend: str, sessions: Sequence[SessionRecord], ttl: float) -> None:
        if len(sessions) > MAX_SESSIONS_PER_REPORT:
            raise ValueError(f"more than {MAX_SESSIONS_PER_REPORT} sessions in one report")
        key = SESSIONS_PREFIX + frontend
        try:
            if sessions:
                await self._client.set(key, records_to_json(sessions), px=max(1, int(ttl * 1000)))
            else:
                await self._client.delete(key)
        except _DOWN as e:
            raise StorageUnavailable(f"sessions: {e}") from e

    async def sessions(self, account: str = "") -> list[SessionRecord]:
        found = [s for _, raw in await self._scan(SESSIONS_PREFIX) for s in records_from_json(raw)]
        return sorted((s for s in found if not account or s.account == account), key=lambda s: s.started)

    async def kick(self, order: KickOrder, ttl: float) -> None:
        key = f"{KICK_PREFIX}{order.protocol}:{order.account}"
        try:
            await self._client.set(key, repr(order.before), px=max(1, int(ttl * 1000)))
        except _DOWN as e:
            raise StorageUnavailable(f"sessions: {e}") from e

    async def kicks(self) -> list[KickOrder]:
        orders = []
        for key, value in await self._scan(KICK_PREFIX):
            protocol, _, account = key[len(KICK_PREFIX) :].partition(":")
            orders.append(KickOrder(account, protocol, float(value)))
        return orders

    async def _scan(self, prefix: str) -> list[tuple[str, bytes | str]]:
        """(key, value) of every key under prefix; a key that expired between SCAN and MGET is left out."""
        try:
            keys = [key async for key in self._client.scan_iter(match=prefix + "*", count=SCAN_BATCH)]
            values = await self._client.mget(keys) if keys else []
        except _DOWN as e:
            raise StorageUnavailable(f"sessions: {e}") from e
        return [(key.decode(), value) for key, value in zip(keys, values, strict=True) if value is not None]

    async def close(self) -> None:
        await self._client.aclose()
