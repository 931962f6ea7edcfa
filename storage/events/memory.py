"""The in-process event bus (embedded mode)."""

from __future__ import annotations

from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.events.base import ChangeEvent
from mailstack.storage.events.queue import DEFAULT_QUEUE_LIMIT, QueueSubscription


class MemoryEventBus:
    """Fan-out inside one process: publish() puts the event on every subscriber's queue of the account."""

    def __init__(self, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self._queue_limit = queue_limit
        self._subscribers: dict[str, set[QueueSubscription]] = {}
        self._closed = False

    async def publish(self, event: ChangeEvent) -> None:
        if self._closed:
            raise StorageUnavailable("event bus is closed")
        self.fan_out(event)

    def fan_out(self, event: ChangeEvent) -> None:
        """Put the event on the queue of every subscriber of its account (never blocks)."""
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
