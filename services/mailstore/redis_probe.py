"""mailstack_redis_up{store}: whether the Redis behind the event bus and the quota counters answers.

Asked on its own schedule (a PING every PROBE_EVERY seconds, bounded by PROBE_TIMEOUT), not inferred
from traffic: an idle mailstore still says whether its Redis is there, and a busy one's gauge does
not flap with single slow calls. Stores on the same URL share one PING."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as redis
from mailstack.services.common.config import Settings
from mailstack.services.common.metrics import REDIS_UP

log = logging.getLogger("mailstack.mailstore")

PROBE_EVERY = 5.0
PROBE_TIMEOUT = 2.0
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_stores(settings: Settings) -> dict[str, str]:
    """store ("events", "quota") -> URL, for the stores kept in Redis."""
    urls = {"events": settings.events_url, "quota": settings.quota_url}
    return {store: url for store, url in urls.items() if url.startswith(REDIS_SCHEMES)}


class RedisProbe:
    def __init__(self, stores: dict[str, str]) -> None:
        self._stores = stores
        self._clients = {url: redis.from_url(url, socket_timeout=PROBE_TIMEOUT) for url in set(stores.values())}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._clients and self._task is None:
            self._task = asyncio.create_task(self._probe_forever(), name="redis-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for client in self._clients.values():
            await client.aclose()

    async def probe(self) -> None:
        """PING each Redis once; set the gauge of every store on it."""
        up = dict(zip(self._clients, await asyncio.gather(*map(self._ping, self._clients.values())), strict=True))
        for store, url in self._stores.items():
            REDIS_UP.labels(store).set(1 if up[url] else 0)

    @staticmethod
    async def _ping(client: redis.Redis) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                return bool(await client.ping())
        except (redis.RedisError, OSError, TimeoutError) as err:
            log.debug("redis PING failed", extra={"error": str(err)})
            return False

    async def _probe_forever(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(PROBE_EVERY)
