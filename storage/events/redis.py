"""The Redis event bus: PUBLISH on one channel per account; all subscriptions of a process share
ONE pub/sub connection (an IMAP process may hold thousands of sessions).

Redis pub/sub is fire-and-forget: while the connection is down events are lost. So after a
(re)connect every subscriber of a re-subscribed channel gets a "resync" and re-reads state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio
import redis.exceptions
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.events.base import ChangeEvent
from mailstack.storage.events.queue import DEFAULT_QUEUE_LIMIT, QueueSubscription
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "mailstack:events:"
# Shown by CLIENT LIST, so an operator can tell the subscriber connection apart.
CONNECTION_NAME = "mailstack-events"
# Errors that mean "Redis is down or unreachable" (AuthenticationError and BusyLoadingError
# are ConnectionErrors too); builtin TimeoutError is an OSError.
REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


def channel_name(account: str) -> str:
    return CHANNEL_PREFIX + account


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Channel:
    """Local state of one subscribed account channel."""

    __slots__ = ("confirmed", "settled", "subscribers", "unsynced")

    def __init__(self) -> None:
        self.subscribers: set[QueueSubscription] = set()
        # Set once Redis confirmed the SUBSCRIBE on the current connection.
        self.confirmed = asyncio.Event()
        # Set once the current SUBSCRIBE attempt is over, confirmed or failed: subscribe() waits for it.
        self.settled = asyncio.Event()
        # Subscribers that may have missed events: they get a resync at the next confirmation.
        self.unsynced: set[QueueSubscription] = set()


class RedisEventBus:
    def __init__(
        self,
        url: str,
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        timeout: float = 1.0,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        health_check_interval: float = 15.0,
        subscribe_wait: float = 2.0,
    ) -> None:
        # Short timeouts and no transparent retries: a down Redis must fail fast, not hang.
        self._client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._queue_limit = queue_limit
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._health_check_interval = health_check_interval
        self._subscribe_wait = subscribe_wait
        self._channels: dict[str, _Channel] = {}
        # SUBSCRIBEs sent on the current connection and not yet confirmed, per channel name
        # (an UNSUBSCRIBE + SUBSCRIBE of the same name may overlap).
        self._inflight: dict[str, int] = {}
        self._conn: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._down = False  # the last connection attempt failed: new subscribers need not wait
        self._closed = False

    # ---- publishing

    async def publish(self, event: ChangeEvent) -> None:
        if self._closed:
            raise StorageUnavailable("event bus is closed")
        try:
            await self._client.publish(channel_name(event.account), event.to_json())
        except REDIS_DOWN_ERRORS as e:
            raise StorageUnavailable(f"event bus: {e}") from e

    # ---- subscribing

    async def subscribe(self, account: str) -> QueueSubscription:
        if self._closed:
            raise StorageUnavailable("event bus is closed")
        name = channel_name(account)
        sub = QueueSubscription(account, self._queue_limit, self._unsubscribe)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
            channel.subscribers.add(sub)
            await self._send("SUBSCRIBE", name)
        else:
            channel.subscribers.add(sub)
        self._start_reader()
        if not channel.confirmed.is_set() and not self._down:
            # Wait for the confirmation so that an event published right after subscribe() arrives.
            try:
                async with asyncio.timeout(self._subscribe_wait):
                    await channel.settled.wait()
            except TimeoutError:
                pass
        if not channel.confirmed.is_set() and not sub.closed:
            # Redis is down: the caller goes on without push until the reconnect's resync.
            channel.unsynced.add(sub)
        return sub

    async def _unsubscribe(self, sub: QueueSubscription) -> None:
        name = channel_name(sub.account)
        channel = self._channels.get(name)
        if channel is None or sub not in channel.subscribers:
            return
        channel.subscribers.discard(sub)
        channel.unsynced.discard(sub)
        if not channel.subscribers:
            del self._channels[name]
            if not self._closed:
                await self._send("UNSUBSCRIBE", name)

    async def _send(self, command: str, name: str) -> None:
        """Write (UN)SUBSCRIBE on the shared connection; its reply arrives in the reader task."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            return  # the reader subscribes every channel when it (re)connects
        if command == "SUBSCRIBE":
            self._inflight[name] = self._inflight.get(name, 0) + 1
        try:
            await conn.send_command(command, name, check_health=False)
        except REDIS_DOWN_ERRORS as e:
            log.debug("event bus: %s %s failed (%s); the reader reconnects", command, name, e)

    # ---- the reader task

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._run(), name="redis-event-bus-reader")

    async def _run(self) -> None:
        delay = self._backoff_min
        while not self._closed:
            conn: AbstractConnection | None = None
            try:
                # our own, outside the pool; redis-py leaves make_connection unannotated
                conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                await conn.connect()
                await conn.send_command("CLIENT", "SETNAME", CONNECTION_NAME, check_health=False)
                await conn.read_response()
                # From here on subscribe() writes its own SUBSCRIBEs; the snapshot below is taken
                # without an await in between, so no channel is missed or subscribed twice.
                self._conn = conn
                self._down = False
                self._inflight.clear()
                names = list(self._channels)
                for name in names:
                    self._inflight[name] = 1
                    self._channels[name].settled.clear()
                if names:
                    await conn.send_command("SUBSCRIBE", *names, check_health=False)
                delay = self._backoff_min
                await self._read(conn)
            except REDIS_DOWN_ERRORS as e:
                log.warning(
                    "event bus: Redis connection lost; retrying", extra={"error": str(e), "retry_seconds": delay}
                )
            except Exception:
                log.exception("event bus: unexpected error on the pub/sub connection; retrying in %.1fs", delay)
            finally:
                self._conn = None
                self._connection_lost()
                if conn is not None:
                    with contextlib.suppress(*REDIS_DOWN_ERRORS):
                        await conn.disconnect(nowait=True)
            self._down = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _read(self, conn: AbstractConnection) -> None:
        ping_sent = False
        while True:
            # push_request: under RESP3 pub/sub messages are push frames; RESP2 ignores it.
            message = await conn.read_response(timeout=self._health_check_interval, push_request=True)
            if message is None:
                # Quiet connection: a PING (allowed while subscribed) tells a dead peer from silence.
                if ping_sent:
                    raise redis.exceptions.TimeoutError("no answer to PING on the pub/sub connection")
                await conn.send_command("PING", check_health=False)
                ping_sent = True
                continue
            ping_sent = False
            self._dispatch(message)

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 2:
            return
        kind = _text(message[0])
        name = _text(message[1])
        if kind == "message" and len(message) >= 3:
            channel = self._channels.get(name)
            if channel is None:
                return
            try:
                event = ChangeEvent.from_json(message[2])
            except (ValueError, KeyError, TypeError):
                log.warning("event bus: ignoring a malformed event", extra={"channel": name})
                return
            for sub in list(channel.subscribers):
                sub.deliver(event)
        elif kind == "subscribe":
            left = self._inflight.get(name, 0) - 1
            if left > 0:
                self._inflight[name] = left
                return
            self._inflight.pop(name, None)
            channel = self._channels.get(name)
            if channel is None:
                return
            channel.confirmed.set()
            channel.settled.set()
            for sub in channel.unsynced:
                sub.deliver_resync()
            channel.unsynced.clear()
        # "unsubscribe" confirmations and PING replies need nothing.

    def _connection_lost(self) -> None:
        self._inflight.clear()
        for channel in self._channels.values():
            channel.confirmed.clear()
            channel.settled.set()
            channel.unsynced.update(channel.subscribers)

    # ---- shutdown

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
            self._reader = None
        subs = [sub for channel in self._channels.values() for sub in channel.subscribers]
        self._channels.clear()
        for sub in subs:
            await sub.close()
        await self._client.aclose()
