"""The workers' event bus (storage/events/siblings.py, ADR 0043): an event published in one worker
reaches the subscribers of its siblings as one bounded datagram; what arrives on a worker's socket
that is not an event (garbage, too large, a wrong kind) is dropped and logged, and the bus goes on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path

import pytest
from mailstack.storage.events.base import ChangeEvent
from mailstack.storage.events.siblings import MAX_DATAGRAM, SiblingEventBus, decode, encode, socket_path
from mailstack.storage.registry import open_event_bus

EVENT = ChangeEvent("ann@example.test", "INBOX", "new", (7, 8), 12, 99)


def test_an_event_survives_its_datagram() -> None:
    assert decode(encode(EVENT)) == EVENT


def test_an_event_too_large_for_a_datagram_goes_without_its_uids() -> None:
    big = ChangeEvent("ann@example.test", "INBOX", "expunge", tuple(range(1, 5000)), 40, 99)
    data = encode(big)
    assert len(data) <= MAX_DATAGRAM
    assert decode(data) == ChangeEvent("ann@example.test", "INBOX", "expunge", (), 40, 99)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe not json",
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"a": "ann@example.test"}',
        json.dumps({"a": "ann@example.test", "m": "INBOX", "k": "delete-everything"}).encode(),
        json.dumps({"a": "ann@example.test", "m": "INBOX", "k": "resync"}).encode(),
        json.dumps({"a": 5, "m": "INBOX", "k": "new"}).encode(),
        json.dumps({"a": "", "m": "INBOX", "k": "new"}).encode(),
        json.dumps({"a": "x" * 2000, "m": "INBOX", "k": "new"}).encode(),
        json.dumps({"a": "ann@example.test", "m": "INBOX", "k": "new", "u": [-1]}).encode(),
        json.dumps({"a": "ann@example.test", "m": "INBOX", "k": "new", "u": "abc"}).encode(),
        json.dumps({"a": "ann@example.test", "m": "INBOX", "k": "new", "s": "many"}).encode(),
        b"{" + b" " * MAX_DATAGRAM + b"}",
    ],
)
def test_what_is_not_an_event_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


async def next_event(sub: object, seconds: float = 2.0) -> ChangeEvent:
    return await asyncio.wait_for(anext(sub), seconds)  # type: ignore[call-overload]


async def test_an_event_reaches_the_subscribers_of_every_worker(tmp_path: Path) -> None:
    buses = [SiblingEventBus(tmp_path, i, 3) for i in range(3)]
    try:
        subs = [await bus.subscribe("ann@example.test") for bus in buses]
        other = await buses[2].subscribe("bob@example.test")
        await buses[1].publish(EVENT)
        for sub in subs:  # the publisher's own subscribers too, once
            assert await next_event(sub) == EVENT
        with pytest.raises(TimeoutError):
            await next_event(other, 0.2)
        with pytest.raises(TimeoutError):
            await next_event(subs[1], 0.2)  # no echo back from the siblings
    finally:
        for bus in buses:
            await bus.close()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".sock")]  # each removes its socket


async def test_garbage_on_the_socket_is_dropped_and_logged_and_the_bus_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = SiblingEventBus(tmp_path, 0, 2)
    try:
        sub = await bus.subscribe("ann@example.test")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as attacker, caplog.at_level(logging.WARNING):
            target = str(socket_path(tmp_path, 0))
            attacker.sendto(b"\x00garbage", target)
            attacker.sendto(b"{" + b"x" * 60_000, target)  # oversized: read truncated, refused
            attacker.sendto(encode(EVENT), target)
            assert await next_event(sub) == EVENT
        assert bus.dropped == 2
        assert sum("dropped a datagram" in r.getMessage() for r in caplog.records) == 2
    finally:
        await bus.close()


async def test_a_sibling_not_there_costs_the_event_only(tmp_path: Path) -> None:
    bus = SiblingEventBus(tmp_path, 0, 3)  # workers 1 and 2 never started
    try:
        sub = await bus.subscribe("ann@example.test")
        await bus.publish(EVENT)
        assert await next_event(sub) == EVENT
        assert bus.unsent == 2
    finally:
        await bus.close()


async def test_the_registry_opens_it_from_the_url_serve_gives_a_worker(tmp_path: Path) -> None:
    bus = open_event_bus(f"workers://{tmp_path}?worker=1&count=2")
    try:
        assert isinstance(bus, SiblingEventBus)
        assert socket_path(tmp_path, 1).exists()
        assert oct(socket_path(tmp_path, 1).stat().st_mode & 0o777) == oct(0o600)
    finally:
        await bus.close()
