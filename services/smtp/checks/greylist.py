"""Greylisting: the first attempt of an unknown (client network, sender, recipient) triplet is
answered 451 4.7.1; a retry after the delay passes, and the triplet is then remembered.

State lives in Redis when several SMTP replicas must share it, else in this process (the
embedded default runs one SMTP process). Redis down: mail passes (fail open, logged)."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio
import redis.exceptions

log = logging.getLogger("mailstack.smtp")
MAX_MEMORY_ENTRIES = 100_000  # in-process: the oldest are forgotten beyond this


class GreylistStore(Protocol):
    async def first_seen(self, key: str, now: float, ttl: int) -> float:
        """When the triplet was first seen (`now` if never: then remembered for `ttl` seconds)."""
        ...

    async def keep(self, key: str, ttl: int) -> None:
        """Remember a triplet that passed for `ttl` more seconds."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (first seen, expires)

    async def first_seen(self, key: str, now: float, ttl: int) -> float:
        entry = self.entries.get(key)
        if entry is not None and entry[1] > now:
            return entry[0]
        self.entries[key] = (now, now + ttl)
        self.entries.move_to_end(key)
        while len(self.entries) > MAX_MEMORY_ENTRIES:
            self.entries.popitem(last=False)
        return now

    async def keep(self, key: str, ttl: int) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries[key] = (entry[0], time.time() + ttl)
            self.entries.move_to_end(key)

    async def close(self) -> None:
        self.entries.clear()


class RedisStore:
    def __init__(self, url: str) -> None:
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    async def first_seen(self, key: str, now: float, ttl: int) -> float:
        # SET NX keeps the first replica's time; GET in the same round trip reads whichever won.
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, repr(now), nx=True, ex=ttl)
            pipe.get(key)
            _, value = await pipe.execute()
        return float(value) if value is not None else now

    async def keep(self, key: str, ttl: int) -> None:
        await self.client.expire(key, ttl)

    async def close(self) -> None:
        await self.client.aclose()


def network_of(ip: str) -> str:
    """The client's /24 (IPv4) or /64 (IPv6): senders retry from another host of their pool."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class Greylist:
    def __init__(self, store: GreylistStore, delay: int, retry_window: int, lifetime: int) -> None:
        self.store = store
        self.delay = delay
        self.retry_window = retry_window  # how long a first attempt waits for its retry
        self.lifetime = lifetime  # how long a triplet that passed is let through, renewed by each pass

    @staticmethod
    def key(ip: str, sender: str, recipient: str) -> str:
        triplet = f"{network_of(ip)}\0{sender.lower()}\0{recipient.lower()}"
        return "mailstack:greylist:" + hashlib.sha256(triplet.encode("utf-8", "replace")).hexdigest()[:32]

    async def refusal(self, ip: str, sender: str, recipient: str) -> str | None:
        key = self.key(ip, sender, recipient)
        now = time.time()
        try:
            first = await self.store.first_seen(key, now, self.retry_window)
            waited = now - first
            if waited >= self.delay:
                await self.store.keep(key, self.lifetime)
                return None
        except (redis.exceptions.RedisError, OSError) as err:
            log.warning("greylist store unavailable, mail passes: %s", err)
            return None
        return f"451 4.7.1 Greylisted, try again in {int(self.delay - waited) + 1} seconds"
