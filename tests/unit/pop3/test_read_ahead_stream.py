"""Read-ahead as a stream: RETR waits for its own message only, not for the rest of the batch.

The session runs against a scripted mailstore (the real one is used in test_session.py), so that
the test decides when each message arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import pytest
from mailstack.services.common.read_ahead import ReadAheadBudget
from mailstack.services.pop3.mailstore import Lease, MailstoreError, MessageInfo, Pop3Mailstore, Snapshot
from mailstack.services.pop3.protocol.receiver import parse_line
from mailstack.services.pop3.session import Pop3Session

from tests.fixtures.mailstore import settings_for

BODIES = {1: b"Subject: 1\r\n\r\n.dot\r\n", 2: b"Subject: 2\r\n\r\nbare LF\n.x\n", 3: b"Subject: 3\r\n\r\nthree\r\n"}
STUFFED = {
    1: b"Subject: 1\r\n\r\n..dot\r\n.\r\n",
    2: b"Subject: 2\r\n\r\nbare LF\r\n..x\r\n.\r\n",
    3: b"Subject: 3\r\n\r\nthree\r\n.\r\n",
}


class ScriptedMailstore:
    """bodies() yields the messages in `arrive` order, then waits for `release`; `fail_after`
    makes it fail once that many were yielded."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.release = asyncio.Event()
        self.fail_after = fail_after
        self.stream_closed = asyncio.Event()
        self.streamed: list[int] = []  # UIDs fetched alone (FetchBody)

    async def authenticate(
        self, username: str, password: str, authzid: str, ip: str, lease: Lease
    ) -> tuple[str, bool, Snapshot | None]:
        return "alice@example.test", True, None  # the session then asks snapshot()

    async def snapshot(self, account: str) -> Snapshot:
        return Snapshot(7, tuple(MessageInfo(uid, len(data)) for uid, data in BODIES.items()))

    async def acquire_lease(self, name: str, holder: str, ttl: int) -> bool:
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        return None

    async def bodies(self, account: str, uids: list[int]) -> AsyncGenerator[tuple[int, bytes, bool], None]:
        try:
            for count, uid in enumerate(uids):
                if self.fail_after is not None and count == self.fail_after:
                    raise MailstoreError("mailstore went away", temporary=True)
                if count == 1:
                    await self.release.wait()  # the rest of the batch is "still on its way"
                data = BODIES[uid]
                yield uid, data, b"\n" not in data.replace(b"\r\n", b"")
        finally:
            self.stream_closed.set()

    async def body(self, account: str, uid: int, text: Any = None) -> AsyncGenerator[bytes, None]:
        self.streamed.append(uid)
        yield BODIES[uid]


class Recorder:
    tls = True
    can_start_tls = False
    remote_ip = "127.0.0.1"
    local_ip = "127.0.0.1"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(data)


async def logged_in(tmp_path: Path, store: ScriptedMailstore) -> tuple[Pop3Session, Recorder]:
    conn = Recorder()
    session = Pop3Session(
        settings_for(tmp_path), cast(Pop3Mailstore, store), cast(Any, conn), read_ahead=ReadAheadBudget(1 << 20)
    )
    for line in (b"USER alice", b"PASS secret"):
        assert not await session.handle(parse_line(line))
    assert conn.sent[-1].startswith(b"+OK")
    return session, conn


async def test_retr_is_answered_before_the_rest_of_the_batch_arrives(tmp_path: Path) -> None:
    store = ScriptedMailstore()
    session, conn = await logged_in(tmp_path, store)
    # message 2 never arrives while RETR 1 runs: RETR 1 must not wait for it
    await asyncio.wait_for(session.handle(parse_line(b"RETR 1")), 5)
    assert conn.sent[-1] == b"+OK %d octets\r\n" % len(BODIES[1]) + STUFFED[1]
    retr2 = asyncio.ensure_future(session.handle(parse_line(b"RETR 2")))
    await asyncio.sleep(0.05)
    assert not retr2.done(), "RETR 2 waits for its message"
    store.release.set()
    await asyncio.wait_for(retr2, 5)
    await session.handle(parse_line(b"RETR 3"))
    # stuffed and CRLF-normalised on arrival, byte-exact
    assert conn.sent[-2:] == [b"+OK %d octets\r\n" % len(BODIES[n]) + STUFFED[n] for n in (2, 3)]
    assert store.streamed == [], "all three came from the one read-ahead call"
    await session.close()


async def test_closing_the_session_cancels_the_fetch_still_running(tmp_path: Path) -> None:
    store = ScriptedMailstore()
    session, _ = await logged_in(tmp_path, store)
    await session.handle(parse_line(b"RETR 1"))
    assert not store.stream_closed.is_set()
    await asyncio.wait_for(session.close(), 5)
    assert store.stream_closed.is_set(), "the FetchBodies call is closed, not left running"


@pytest.mark.parametrize("fail_after", [0, 1])
async def test_messages_the_batch_did_not_deliver_are_streamed_alone(tmp_path: Path, fail_after: int) -> None:
    store = ScriptedMailstore(fail_after=fail_after)
    store.release.set()
    session, conn = await logged_in(tmp_path, store)
    for n in (1, 2, 3):
        await asyncio.wait_for(session.handle(parse_line(b"RETR %d" % n)), 5)
        assert conn.sent[-1] == b"+OK %d octets\r\n" % len(BODIES[n]) + STUFFED[n]
    # the first failure ends the batch: what it had not delivered is fetched alone, once
    assert store.streamed == [1, 2, 3][fail_after:]
    await session.close()
