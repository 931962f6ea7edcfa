"""Quota counters in Redis, shared by every mailstore replica: a Lua check-and-add keeps
reserve atomic without a lock (Redis runs a script as one command)."""

from __future__ import annotations

import redis.asyncio
import redis.exceptions
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.quota.base import QuotaUsage
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

KEY_PREFIX = "mailstack:quota:"

# KEYS[1] = hash {bytes, messages}; ARGV = size, count, limit_bytes, limit_messages (0 = unlimited).
_RESERVE = """
local used_bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local used_messages = tonumber(redis.call('HGET', KEYS[1], 'messages') or '0')
local size, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit_bytes, limit_messages = tonumber(ARGV[3]), tonumber(ARGV[4])
if limit_bytes > 0 and used_bytes + size > limit_bytes then return 0 end
if limit_messages > 0 and used_messages + count > limit_messages then return 0 end
redis.call('HINCRBY', KEYS[1], 'bytes', size)
redis.call('HINCRBY', KEYS[1], 'messages', count)
return 1
"""

# Counters drift (a crash between reserve and the metadata commit), so never go below zero.
_RELEASE = """
local function lower(field, by)
  local value = tonumber(redis.call('HGET', KEYS[1], field) or '0') - by
  if value < 0 then value = 0 end
  redis.call('HSET', KEYS[1], field, value)
end
lower('bytes', tonumber(ARGV[1]))
lower('messages', tonumber(ARGV[2]))
return 1
"""

_REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


# Present while the counters are whole: set after a full recompute, gone with a Redis that lost its data.
INTACT_KEY = "mailstack:quota-intact"  # not under KEY_PREFIX: no account can be named like it


def quota_key(account: str) -> str:
    return KEY_PREFIX + account


def _check_amounts(size: int, count: int) -> None:
    if size < 0 or count < 0:
        raise ValueError(f"quota amounts must not be negative (size={size}, count={count})")


class RedisQuotaStore:
    enforced_by_metadata = False

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        # Short timeouts and no transparent retries: a down Redis must fail fast, not hang.
        self._client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        # register_script runs EVALSHA and falls back to loading the script (NOSCRIPT).
        self._reserve = self._client.register_script(_RESERVE)
        self._release = self._client.register_script(_RELEASE)

    async def reserve(self, account: str, size: int, count: int, limit_bytes: int, limit_messages: int) -> bool:
        _check_amounts(size, count)
        try:
            granted = await self._reserve(
                keys=[quota_key(account)], args=[size, count, max(limit_bytes, 0), max(limit_messages, 0)]
            )
        except _REDIS_DOWN_ERRORS as e:
            raise StorageUnavailable(f"quota: {e}") from e
        return bool(granted)

    async def release(self, account: str, size: int, count: int) -> None:
        _check_amounts(size, count)
        try:
            await self._release(keys=[quota_key(account)], args=[size, count])
        except _REDIS_DOWN_ERRORS as e:
            raise StorageUnavailable(f"quota: {e}") from e

    async def usage(self, account: str) -> QuotaUsage:
        try:
            fields = await self._client.hmget(quota_key(account), ["bytes", "messages"])
        except _REDIS_DOWN_ERRORS as e:
            raise StorageUnavailable(f"quota: {e}") from e
        used_bytes, used_messages = (int(value) if value is not None else 0 for value in fields)
        return QuotaUsage(bytes=used_bytes, messages=used_messages)

    async def set_usage(self, account: str, usage: QuotaUsage) -> None:
        _check_amounts(usage.bytes, usage.messages)
        try:
            await self._client.hset(quota_key(account), mapping={"bytes": usage.bytes, "messages": usage.messages})
        except _REDIS_DOWN_ERRORS as e:
            raise StorageUnavailable(f"quota: {e}") from e

    async def intact(self) -> bool:
        try:
            return bool(await self._client.exists(INTACT_KEY))
        except _REDIS_DOWN_ERRORS as e:
            raise StorageUnavailable(f"quota: {e}") from e

    async def mark_intact(self) -> None:
        try:
            await self._client.set(INTACT_KEY, "1")
        except _REDIS_DOWN_ERRORS as e:
            raise StorageUnavailable(f"quota: {e}") from e

    async def close(self) -> None:
        await self._client.aclose()
