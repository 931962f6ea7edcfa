"""The contract of storage.events.base.EventBus, written once (issue 20).

A backend's test class subclasses EventBusContract with a `new_bus` fixture: a factory taking the
bus's options (queue_limit...). test_event_bus_memory.py, test_event_bus_redis.py (with Redis faults).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from mailstack.storage.events.base import ChangeEvent, EventBus, EventKind, Subscription

WAIT = 5.0  # upper bound for one event to arrive; never reached when things work

MakeBus = Callable[..., Awaitable[EventBus]]
NewBus = Callable[..., EventBus]
_accounts = itertools.count()


def account(tag: str = "user") -> str:
    # Pub/sub channels are server-wide (not per database): names unique per test.
    return f"{tag}{next(_accounts)}@example.org"


def event(acct: str, n: int, kind: EventKind = "new") -> ChangeEvent:
    return ChangeEvent(acct, "Ordner/Entwürfe ☃", kind, uids=(n, n + 1), modseq=1000 + n, uidvalidity=7)


async def receive(sub: Subscription, count: int = 1) -> list[ChangeEvent]:
    it = aiter(sub)
    async with asyncio.timeout(WAIT):
        return [await anext(it) for _ in range(count)]


class EventBusContract:
    """Every EventBus passes these. A subclass provides `new_bus(**options) -> EventBus`."""

    @pytest.fixture
    async def make_bus(self, new_bus: NewBus) -> AsyncIterator[MakeBus]:
        buses: list[EventBus] = []

        async def make(**options: int) -> EventBus:
            bus = new_bus(**options)
            buses.append(bus)
            return bus

        yield make
        for bus in buses:
            await bus.close()

    async def test_every_subscriber_gets_every_event_in_order(self, make_bus: MakeBus) -> None:
        bus = await make_bus()
        acct = account()
        first, second = await bus.subscribe(acct), await bus.subscribe(acct)
        sent = [event(acct, n) for n in range(100)]
        for e in sent:
            await bus.publish(e)
        assert await receive(first, 100) == sent
        assert await receive(second, 100) == sent
        assert sent[0].mailbox == "Ordner/Entwürfe ☃" and sent[0].uids == (0, 1)

    async def test_other_accounts_get_nothing(self, make_bus: MakeBus) -> None:
        bus = await make_bus()
        alice, bob = account("alice"), account("bob")
        bob_sub = await bus.subscribe(bob)
        for n in range(3):
            await bus.publish(event(alice, n))
        await bus.publish(event(bob, 99))
        # Events of one connection arrive in order: had alice's leaked, they would come first.
        assert await receive(bob_sub) == [event(bob, 99)]

    async def test_closed_subscription_ends_and_gets_nothing(self, make_bus: MakeBus) -> None:
        bus = await make_bus()
        acct = account()
        leaving, staying = await bus.subscribe(acct), await bus.subscribe(acct)
        await leaving.close()
        with pytest.raises(StopAsyncIteration):
            await anext(aiter(leaving))
        await bus.publish(event(acct, 1))
        assert await receive(staying) == [event(acct, 1)]
        with pytest.raises(StopAsyncIteration):
            await anext(aiter(leaving))

    async def test_close_ends_a_waiting_iteration(self, make_bus: MakeBus) -> None:
        bus = await make_bus()
        sub = await bus.subscribe(account())
        waiting = asyncio.ensure_future(anext(aiter(sub)))
        await asyncio.sleep(0)
        await sub.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, WAIT)

    async def test_closing_the_bus_ends_every_subscription(self, make_bus: MakeBus) -> None:
        bus = await make_bus()
        subs = [await bus.subscribe(account()) for _ in range(3)]
        await bus.close()
        for sub in subs:
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(aiter(sub)), WAIT)

    async def test_slow_consumer_overflow_becomes_one_resync(self, make_bus: MakeBus) -> None:
        bus = await make_bus(queue_limit=10)
        acct = account()
        slow, fast = await bus.subscribe(acct), await bus.subscribe(acct)
        sent = [event(acct, n) for n in range(50)]
        received: list[ChangeEvent] = []
        for e in sent:
            await bus.publish(e)
            # The fast consumer keeps up; once it has an event, the slow one has been offered it too.
            received += await receive(fast)
        assert received == sent
        backlog = await receive(slow, 10)
        assert backlog[0].kind == "resync" and backlog[0].account == acct
        # What follows the resync is the newest events, still in order.
        assert backlog[1:] == sent[-9:]
