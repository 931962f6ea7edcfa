"""IDLE (RFC 2177): push through the notifier, a catch-up poll on a timer, a keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from ..protocol import Command, NeedData, ParseError
from ..protocol.encoder import continuation, untagged_status
from ..replies import EndSession, Reply, bad
from .notify import deliver

if TYPE_CHECKING:
    from ..session import Session

RETRY_SECONDS = 1.0  # a catch-up that failed is tried again after this, while IDLE waits


async def idle(session: Session, command: Command) -> Reply | None:
    # Command: RFC 2177 §3; RFC 9051 §6.3.13
    await session.send(continuation("idling"))
    if await session.services.notifier.wait_live(session.account) and session.view is not None:
        session.mark_dirty()  # just logged in: a change before the source was live is in the log
    clock = _Clock(time.monotonic())
    read: asyncio.Task[None] | None = None
    try:
        while not _done(session.conn.receiver.next_line()):
            await _push_updates(session, clock)
            if read is None:
                read = asyncio.ensure_future(session.conn.read_more(None))
            timeout = clock.timeout(session)
            if _catch_up_failed(session):  # the mailstore was unreachable: try again soon, not at the poll
                timeout = min(timeout, RETRY_SECONDS)
            if await _wait(session, read, timeout):
                task, read = read, None
                task.result()  # raises ClientGone / connection errors
    finally:
        if read is not None:
            read.cancel()
            with contextlib.suppress(BaseException):
                await read
    return None


class _Clock:
    """When IDLE started and when it last sent something (for autologout and keep-alives)."""

    def __init__(self, now: float) -> None:
        self.started = self.last_output = now

    def timeout(self, session: Session) -> float:
        """How long to wait for the client or a hint before looking again."""
        settings, now = session.settings, time.monotonic()
        return min(
            settings.imap_idle_keepalive - (now - self.last_output),
            settings.imap_poll_interval,
            settings.imap_autologout - (now - self.started),
        )


def _catch_up_failed(session: Session) -> bool:
    """The selected mailbox is still dirty after _push_updates read its changes: the read failed."""
    return session.view is not None and session.dirty and not (session.notify and session.notify.pushes_selected)


def _done(line: bytes | NeedData | ParseError) -> bool:
    """True at DONE; False while waiting for it; BAD for any other line."""
    if isinstance(line, NeedData):
        return False
    if isinstance(line, bytes) and line.strip().upper() == b"DONE":
        return True
    raise bad("expected DONE")


async def _push_updates(session: Session, clock: _Clock) -> None:
    """Untagged updates when a hint came or a poll is due; autologout; the keep-alive."""
    settings = session.settings
    session.wake.clear()  # dirty says what the wake-up was about
    if session.view is not None and session.poll_due():
        session.mark_dirty()
    if session.view is not None and session.dirty and not (session.notify and session.notify.pushes_selected):
        await session.pending_updates(waiting=True)  # a read shared with the other IDLE sessions
    await deliver(session, True, waiting=True)  # RFC 5465: NOTIFY's news (the view's too, with MessageNew's attributes)
    if session.has_output:
        await session.flush()
        clock.last_output = time.monotonic()
    now = time.monotonic()
    if now - clock.started >= settings.imap_autologout:
        raise EndSession("autologout: idle for too long")  # RFC 2177: re-issue IDLE in 29 min
    if now - clock.last_output >= settings.imap_idle_keepalive:
        await session.send(untagged_status("OK", "Still here"))
        clock.last_output = now


async def _wait(session: Session, read: asyncio.Task[None], seconds: float) -> bool:
    """Wait for client data, a hint or `seconds`; True when the client's read finished."""
    wake = asyncio.ensure_future(session.wake.wait())
    session.waiting = True
    try:
        done, _ = await asyncio.wait({read, wake}, timeout=max(seconds, 0.01), return_when="FIRST_COMPLETED")
    finally:
        session.waiting = False
        wake.cancel()
    return read in done
