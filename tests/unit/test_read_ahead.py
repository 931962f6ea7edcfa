"""services/common/read_ahead.py: slots resolved as bodies arrive, and the budget always given back."""

from __future__ import annotations

import asyncio

import pytest
from mailstack.services.common.read_ahead import Items, ReadAhead, ReadAheadBudget


async def items(bodies: dict[int, bytes], gate: asyncio.Event | None = None, fail_at: int | None = None) -> Items:
    """Yields the bodies in order; waits for `gate` before the second; fails before uid `fail_at`."""
    for n, (uid, data) in enumerate(bodies.items()):
        if n == 1 and gate is not None:
            await gate.wait()
        if uid == fail_at:
            raise ConnectionError("the mailstore went away")
        yield uid, data, True


BODIES = {1: b"a" * 10, 2: b"b" * 20, 3: b"c" * 30}


async def test_each_body_as_it_arrives_and_the_budget_comes_back() -> None:
    seen: list[int] = []
    budget = ReadAheadBudget(100, seen.append)
    ahead = ReadAhead(budget, "test")
    gate = asyncio.Event()
    assert budget.take(60) == 60
    ahead.start([1, 2, 3], 60, items(BODIES, gate), lambda data, crlf: data.upper())
    assert 1 in ahead and 4 not in ahead
    assert await asyncio.wait_for(ahead.take(1), 5) == b"A" * 10, "without waiting for the others"
    assert budget.held == 50
    second = asyncio.ensure_future(ahead.take(2))
    await asyncio.sleep(0.01)
    assert not second.done()
    gate.set()
    assert await second == b"B" * 20 and await ahead.take(3) == b"C" * 30
    assert budget.held == 0 and seen[-1] == 0, "the gauge follows"
    assert await ahead.take(3) is None, "taken once"


async def test_dropped_mid_fetch_cancels_it_and_gives_everything_back() -> None:
    budget = ReadAheadBudget(100)
    ahead = ReadAhead(budget, "test")
    budget.take(60)
    ahead.start([1, 2, 3], 60, items(BODIES, asyncio.Event()))
    assert await ahead.take(1) == BODIES[1]
    task = ahead.drop()
    assert task is not None
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.held == 0 and 2 not in ahead


@pytest.mark.parametrize("fail_at", [1, 2, 3])
async def test_what_did_not_arrive_resolves_none_and_its_share_comes_back(fail_at: int) -> None:
    budget = ReadAheadBudget(100)
    ahead = ReadAhead(budget, "test")
    budget.take(70)  # more than the bodies: the rest comes back when the fetch ends
    ahead.start([1, 2, 3], 70, items(BODIES, fail_at=fail_at))
    got = [await ahead.take(uid) for uid in (1, 2, 3)]
    assert got == [BODIES[uid] if uid < fail_at else None for uid in (1, 2, 3)]
    assert budget.held == 0


async def test_a_new_start_replaces_the_old_batch() -> None:
    budget = ReadAheadBudget(100)
    ahead = ReadAhead(budget, "test")
    budget.take(30)
    ahead.start([1, 2], 30, items({1: BODIES[1], 2: BODIES[2]}, asyncio.Event()))
    await ahead.take(1)
    budget.take(30)
    ahead.start([3], 30, items({3: BODIES[3]}))
    assert 2 not in ahead and await ahead.take(3) == BODIES[3]
    await asyncio.sleep(0)  # the old fetch's cancellation runs: it must not give anything back twice
    assert budget.held == 0
