"""Many IDLE sessions on one mailbox (RFC 2177, RFC 3501 §2.3.2, §5.2): one delivery reaches every
session as `* n EXISTS`, through one change-log read and one \\Recent claim for all of them (not one
round trip per session: that was the tail of IDLE push, issue 19), \\Recent lands in exactly one
session, and deliveries in a burst, whose hints come while a read is under way, are all told
without waiting for a poll."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mailstack.services.mailstore.servicer import MailstoreServicer

from tests.fixtures.imap_server import ImapEnv, RawImap, imap_env, message

SESSIONS = 20
WAIT = 10.0  # a generous bound for a pushed line, never a timing assertion


@dataclass
class Counted:
    env: ImapEnv
    calls: collections.Counter[str]  # the GetChanges and ClaimRecent calls the mailstore served
    opened: list[RawImap] = field(default_factory=list)  # closed at the end, whatever failed

    def idling(self, user: str) -> RawImap:
        raw = RawImap(self.env.port(), timeout=WAIT)
        self.opened.append(raw)
        raw.login(user)
        assert raw.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        raw.send(b"i IDLE\r\n")
        assert raw.line() == b"+ idling"
        return raw


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counted]:
    """A mailstore that counts the GetChanges and ClaimRecent calls it serves; IDLE never polls."""
    calls: collections.Counter[str] = collections.Counter()
    for name in ("GetChanges", "ClaimRecent"):
        served = getattr(MailstoreServicer, name)

        async def counting(self: Any, request: Any, context: Any, served: Any = served, name: str = name) -> Any:
            calls[name] += 1
            return await served(self, request, context)

        monkeypatch.setattr(MailstoreServicer, name, counting)
    with imap_env(tmp_path, imap_poll_interval=3600) as env:
        state = Counted(env, calls)
        try:
            yield state
        finally:
            for raw in state.opened:
                raw.close()


def _until_exists(raw: RawImap, count: int) -> list[bytes]:
    """Lines while idling up to `* count EXISTS` and the line after it."""
    lines: list[bytes] = []
    while not lines or lines[-1] != b"* %d EXISTS" % count:
        lines.append(raw.line())
    return [*lines, raw.line()]


@pytest.mark.slow
def test_one_delivery_reaches_every_idle_session_through_one_read(
    counted: Counted,
) -> None:
    env, calls = counted.env, counted.calls
    user = env.new_account()
    sessions = [counted.idling(user) for _ in range(SESSIONS)]
    calls.clear()
    env.deliver(user, message("fan out"))
    told = [_until_exists(raw, 1) for raw in sessions]
    assert calls["GetChanges"] == 1, calls
    assert calls["ClaimRecent"] == 1, calls
    # RFC 3501 §2.3.2: the new message is \Recent in exactly one session; the others learn it exists
    recent = [lines[-1] for lines in told]
    assert sorted(recent) == [b"* 0 RECENT"] * (SESSIONS - 1) + [b"* 1 RECENT"], recent
    for raw in sessions:
        raw.send(b"DONE\r\n")
        assert raw.until("i")[-1] == b"i OK completed"
    searches = [raw.command("r", "SEARCH RECENT")[0] for raw in sessions]
    assert searches.count(b"* SEARCH 1") == 1 and searches.count(b"* SEARCH") == SESSIONS - 1


@pytest.mark.slow
def test_a_burst_of_deliveries_is_told_to_every_session_without_a_poll(
    counted: Counted,
) -> None:
    env, calls = counted.env, counted.calls
    user = env.new_account()
    sessions = [counted.idling(user) for _ in range(SESSIONS)]
    calls.clear()
    burst = 5
    for n in range(burst):  # back to back: hints arrive while the sessions' shared read is under way
        env.deliver(user, message(f"burst {n}"))
    for raw in sessions:
        _until_exists(raw, burst)  # the last one told, however the others were grouped
    assert calls["GetChanges"] <= burst, calls  # at most one read per event, whatever the sessions
    for raw in sessions:
        raw.send(b"DONE\r\n")
        assert raw.until("i")[-1] == b"i OK completed"
        assert raw.command("n", "NOOP") == [b"n OK completed"]  # nothing left untold, nothing told twice
