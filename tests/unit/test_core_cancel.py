"""A caller cancelled mid-store (the gRPC client went away) never leaves a row without its body.

Real SQLite metadata store and file blob store; the cancel lands at every await point of
deliver/append, and while the SQLite writer thread is committing (held busy by a slow write).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from mailstack.services.mailstore.core import MailstoreCore

from tests.fixtures.mailstore import settings_for

ACCOUNT = "alice@example.test"
OTHER = "bob@example.test"  # a second recipient: one blob shared by two rows
MESSAGE = b"From: s@remote.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
AWAIT_POINTS = 40  # loop turns to let pass before the cancel: covers every await up to the commit


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[MailstoreCore]:
    opened = await MailstoreCore.open(settings_for(tmp_path, password_scrypt_log_n=10))
    await opened.accounts.create(ACCOUNT, "pw", 0, 0)
    await opened.accounts.create(OTHER, "pw", 0, 0)
    try:
        yield opened
    finally:
        await opened.close()


async def _writer_idle(core: MailstoreCore) -> None:
    """Every write queued so far has been committed (the writer runs them in order)."""
    await core.stores.metadata._write(lambda conn: None)  # type: ignore[attr-defined]


async def _hold_writer(core: MailstoreCore, seconds: float) -> asyncio.Future[None]:
    """Keep the SQLite writer thread busy, so the next write waits and commits later. Returns once the
    hold runs: a write queued before that could join the hold's group (a body kept in the database
    makes a store's write come that fast, ADR 0045) instead of waiting behind it."""
    running = threading.Event()

    def hold(conn: object) -> None:
        running.set()
        time.sleep(seconds)

    held: asyncio.Future[None] = asyncio.ensure_future(core.stores.metadata._write(hold))  # type: ignore[attr-defined]
    assert await asyncio.to_thread(running.wait, 5.0), "the writer thread never ran the hold"
    return held


async def _rows_without_body(core: MailstoreCore) -> list[tuple[str, int]]:
    out = []
    for account in (ACCOUNT, OTHER):
        _, mailbox = await core.stores.mailbox(account, "INBOX")
        records = await core.stores.metadata.fetch(mailbox.id, None)
        out += [(account, r.uid) for r in records if not await core.stores.blobs.exists(r.blob_key)]
    return out


async def _row_count(core: MailstoreCore) -> int:
    _, mailbox = await core.stores.mailbox(ACCOUNT, "INBOX")
    return len(await core.stores.metadata.fetch(mailbox.id, None))


def _stores(core: MailstoreCore) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "deliver": lambda: core.delivery.deliver("s@remote.test", [ACCOUNT], MESSAGE),
        "deliver-shared": lambda: core.delivery.deliver("s@remote.test", [ACCOUNT, OTHER], MESSAGE),
        "append": lambda: core.delivery.append(ACCOUNT, "INBOX", MESSAGE, (), None),
    }


@pytest.mark.parametrize("operation", ["deliver", "deliver-shared", "append"])
async def test_cancel_at_every_await_point_leaves_no_row_without_body(core: MailstoreCore, operation: str) -> None:
    store = _stores(core)[operation]
    for turns in range(AWAIT_POINTS):
        task = asyncio.ensure_future(store())
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _writer_idle(core)
        assert await _rows_without_body(core) == [], f"cancelled after {turns} loop turns"


@pytest.mark.parametrize("operation", ["deliver", "deliver-shared", "append"])
async def test_cancel_while_the_commit_runs_keeps_the_body(core: MailstoreCore, operation: str) -> None:
    store = _stores(core)[operation]
    committed = 0
    for attempt in range(10):
        before = await _row_count(core)
        hold = await _hold_writer(core, 0.2)
        task = asyncio.ensure_future(store())
        writes = core.stores.metadata._write_queue  # type: ignore[attr-defined]
        for _ in range(5000):  # until the store's metadata write waits behind the held one (5 s at most)
            if writes.qsize() or task.done():
                break
            await asyncio.sleep(0.001)
        assert writes.qsize() > 0, "the store never queued its metadata write"
        task.cancel()  # the client is gone: the write is queued and will commit
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await hold
        await _writer_idle(core)
        # Usually the queued write is the message's and commits; on a loaded machine the cancel may
        # land on an earlier write of the store (deliver-shared queues more than one), and then
        # nothing is committed. Either way: all or nothing, never a row without its body.
        after = await _row_count(core)
        assert after in (before, before + 1), f"attempt {attempt}: {after - before} rows"
        committed += after - before
        assert await _rows_without_body(core) == [], f"attempt {attempt}"
    assert committed, "no attempt cancelled a store whose write then committed: the race was not reproduced"
