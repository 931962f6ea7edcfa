"""EventBus contract, run against every backend (memory, redis), plus Redis fault behaviour."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.events.base import ChangeEvent, EventBus, EventKind, Subscription
from mailstack.storage.events.memory import MemoryEventBus
from mailstack.storage.events.redis import CONNECTION_NAME, RedisEventBus, channel_name

from tests.fixtures.redis_server import RedisServer

WAIT = 5.0  # upper bound for one event to arrive; never reached when things work

MakeBus = Callable[..., Awaitable[EventBus]]
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


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    buses: list[EventBus] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    async def make(**options: int) -> EventBus:
        bus: EventBus
        if request.param == "memory":
            bus = MemoryEventBus(**options)
        else:
            bus = RedisEventBus(url, **options)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


async def test_every_subscriber_gets_every_event_in_order(make_bus: MakeBus) -> None:
    bus = await make_bus()
    acct = account()
    first, second = await bus.subscribe(acct), await bus.subscribe(acct)
    sent = [event(acct, n) for n in range(100)]
    for e in sent:
        await bus.publish(e)
    assert await receive(first, 100) == sent
    assert await receive(second, 100) == sent
    assert sent[0].mailbox == "Ordner/Entwürfe ☃" and sent[0].uids == (0, 1)


async def test_other_accounts_get_nothing(make_bus: MakeBus) -> None:
    bus = await make_bus()
    alice, bob = account("alice"), account("bob")
    bob_sub = await bus.subscribe(bob)
    for n in range(3):
        await bus.publish(event(alice, n))
    await bus.publish(event(bob, 99))
    # Events of one connection arrive in order: had alice's leaked, they would come first.
    assert await receive(bob_sub) == [event(bob, 99)]


async def test_closed_subscription_ends_and_gets_nothing(make_bus: MakeBus) -> None:
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


async def test_close_ends_a_waiting_iteration(make_bus: MakeBus) -> None:
    bus = await make_bus()
    sub = await bus.subscribe(account())
    waiting = asyncio.ensure_future(anext(aiter(sub)))
    await asyncio.sleep(0)
    await sub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, WAIT)


async def test_closing_the_bus_ends_every_subscription(make_bus: MakeBus) -> None:
    bus = await make_bus()
    subs = [await bus.subscribe(account()) for _ in range(3)]
    await bus.close()
    for sub in subs:
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(aiter(sub)), WAIT)


async def test_slow_consumer_overflow_becomes_one_resync(make_bus: MakeBus) -> None:
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


# ---- Redis only


async def pubsub_channels(url: str, pattern: str) -> set[bytes | str]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return set(await client.pubsub_channels(pattern))
    finally:
        await client.aclose()


async def test_redis_unsubscribes_when_the_last_subscriber_leaves(redis_url: str) -> None:
    bus = RedisEventBus(redis_url)
    try:
        acct = account()
        name = channel_name(acct).encode()
        first, second = await bus.subscribe(acct), await bus.subscribe(acct)
        assert await pubsub_channels(redis_url, name.decode()) == {name}
        await first.close()
        assert await pubsub_channels(redis_url, name.decode()) == {name}
        await second.close()
        # UNSUBSCRIBE is written, not awaited (its reply reaches the reader task): poll, bounded.
        for _ in range(250):
            if not await pubsub_channels(redis_url, name.decode()):
                break
            await asyncio.sleep(0.02)
        assert await pubsub_channels(redis_url, name.decode()) == set()
        # Subscribing again after that works (a fresh SUBSCRIBE on the same connection).
        again = await bus.subscribe(acct)
        await bus.publish(event(acct, 5))
        assert await receive(again) == [event(acct, 5)]
    finally:
        await bus.close()


async def test_redis_many_subscriptions_share_one_connection(redis_url: str) -> None:
    bus = RedisEventBus(redis_url)
    try:
        accounts = [account("many") for _ in range(200)]
        subs = await asyncio.gather(*(bus.subscribe(a) for a in accounts))
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            clients = await client.client_list()
        finally:
            await client.aclose()
        subscribers = [c for c in clients if int(c.get("sub", 0)) > 0]
        assert len(subscribers) == 1, subscribers
        assert subscribers[0]["name"] == CONNECTION_NAME
        assert int(subscribers[0]["sub"]) == 200
        await bus.publish(event(accounts[123], 1))
        assert await receive(subs[123]) == [event(accounts[123], 1)]
    finally:
        await bus.close()


async def test_redis_outage_degrades_and_recovers(restartable_redis_server: RedisServer) -> None:
    server = restartable_redis_server
    bus = RedisEventBus(server.url)
    try:
        acct = account()
        sub = await bus.subscribe(acct)
        await bus.publish(event(acct, 1))
        assert await receive(sub) == [event(acct, 1)]

        server.stop()
        # Publish fails fast with the storage error the mailstore maps to UNAVAILABLE.
        async with asyncio.timeout(2.5):
            with pytest.raises(StorageUnavailable):
                await bus.publish(event(acct, 2))
        # The subscriber just waits; nothing is raised out of its iteration.
        waiting = asyncio.ensure_future(anext(aiter(sub)))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        # A session that subscribes while Redis is down is not held up either.
        late = await asyncio.wait_for(bus.subscribe(acct), 1.0)

        server.start()  # same port
        # The bus reconnects with backoff, re-subscribes and tells both that they may have missed events.
        resync = await asyncio.wait_for(waiting, 15)
        assert resync.kind == "resync" and resync.account == acct
        assert [e.kind for e in await receive(late)] == ["resync"]
        await bus.publish(event(acct, 3))
        assert await receive(sub) == [event(acct, 3)]
        assert await receive(late) == [event(acct, 3)]
    finally:
        await bus.close()


async def test_redis_quiet_connection_is_kept_alive(redis_url: str) -> None:
    # A short health interval makes the reader PING the silent pub/sub connection a few times.
    bus = RedisEventBus(redis_url, health_check_interval=0.1)
    try:
        acct = account()
        sub = await bus.subscribe(acct)
        await asyncio.sleep(0.5)
        await bus.publish(event(acct, 1))
        assert await receive(sub) == [event(acct, 1)]
    finally:
        await bus.close()


async def test_redis_subscribing_before_redis_is_up(restartable_redis_server: RedisServer) -> None:
    server = restartable_redis_server
    server.stop()
    bus = RedisEventBus(server.url)
    try:
        acct = account()
        # Not held up by the failing connection; the subscription is usable and waits.
        sub = await asyncio.wait_for(bus.subscribe(acct), 1.0)
        server.start()
        assert [e.kind for e in await receive(sub)] == ["resync"]
        await bus.publish(event(acct, 1))
        assert await receive(sub) == [event(acct, 1)]
    finally:
        await bus.close()
