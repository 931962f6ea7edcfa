"""The in-process event bus (embedded mode), and the bounded subscriber queue the Redis bus shares."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.events.base import ChangeEvent

# A consumer that falls this far behind has lost track anyway: its backlog is
# replaced by one "resync" (events are hints; it re-reads state from the mailstore).
DEFAULT_QUEUE_LIMIT = 10_000


class QueueSubscription:
    """One subscriber's bounded queue; iterating yields events until close()."""

    def __init__(
        self,
        account: str,
        limit: int = DEFAULT_QUEUE_LIMIT,
        on_close: Callable[[QueueSubscription], Awaitable[None]] | None = None,
    ) -> None:
        self.account = account
        self._limit = limit
        self._on_close = on_close
        self._events: deque[ChangeEvent] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def deliver(self, event: ChangeEvent) -> None:
        """Queue an event without blocking the publisher; overflow collapses the backlog into a resync."""
        if self._closed:
            return
        if len(self._events) >= self._limit:
            self._events.clear()
            event = self.resync_event()
        self._events.append(event)
        self._ready.set()

    def deliver_resync(self) -> None:
        """Tell the consumer it may have missed events; older queued hints are moot."""
        if self._closed:
            return
        self._events.clear()
        self._events.append(self.resync_event())
        self._ready.set()

    def resync_event(self) -> ChangeEvent:
        return ChangeEvent(account=self.account, mailbox="", kind="resync")

    def __aiter__(self) -> QueueSubscription:
        return self

    async def __anext__(self) -> ChangeEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._events:
                return self._events.popleft()
            self._ready.clear()
            await self._ready.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._events.clear()
        self._ready.set()  # wake a waiting iterator so it ends
        if self._on_close is not None:
            await self._on_close(self)


class MemoryEventBus:
    """Fan-out inside one process: publish() puts the event on every subscriber's queue of the account."""

    def __init__(self, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self._queue_limit = queue_limit
        self._subscribers: dict[str, set[QueueSubscription]] = {}
        self._closed = False

    async def publish(self, event: ChangeEvent) -> None:
        if self._closed:
            raise StorageUnavailable("event bus is closed")
        for sub in list(self._subscribers.get(event.account, ())):
            sub.deliver(event)

    async def subscribe(self, account: str) -> QueueSubscription:
        if self._closed:
            raise StorageUnavailable("event bus is closed")
        sub = QueueSubscription(account, self._queue_limit, self._unsubscribe)
        self._subscribers.setdefault(account, set()).add(sub)
        return sub

    async def _unsubscribe(self, sub: QueueSubscription) -> None:
        subs = self._subscribers.get(sub.account)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subscribers[sub.account]

    async def close(self) -> None:
        self._closed = True
        subs = [sub for group in self._subscribers.values() for sub in group]
        self._subscribers.clear()
        for sub in subs:
            await sub.close()
