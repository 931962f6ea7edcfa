"""The event bus contract on a real Valkey, and Redis's own faults (outage, keep-alive, shared connection)."""

from __future__ import annotations

import asyncio
import functools

import pytest
import redis.asyncio
from mailstack.storage.errors import StorageUnavailable
from mailstack.storage.events.redis import CONNECTION_NAME, RedisEventBus, channel_name

from tests.contract.event_bus_contract import EventBusContract, NewBus, account, event, receive
from tests.fixtures.redis_server import RedisServer


class TestRedisEventBus(EventBusContract):
    @pytest.fixture
    def new_bus(self, redis_url: str) -> NewBus:
        return functools.partial(RedisEventBus, redis_url)


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
