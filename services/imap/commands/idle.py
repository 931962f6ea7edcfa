"""IDLE (RFC 2177): push through the notifier, a catch-up poll on a timer, a keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from ..protocol import Command, NeedData, ParseError
from ..protocol.encoder import continuation, untagged_status

if TYPE_CHECKING:
    from ..session import Reply, Session


async def idle(session: Session, command: Command) -> Reply | None:
    # Command: RFC 2177 §3; RFC 9051 §6.3.13
    from ..errors import bad
    from ..session import EndSession

    settings = session.settings
    await session.send(continuation("idling"))
    started = last_output = time.monotonic()
    read: asyncio.Task[None] | None = None
    try:
        while True:
            line = session.conn.receiver.next_line()
            if isinstance(line, bytes):
                if line.strip().upper() == b"DONE":
                    return None
                raise bad("expected DONE")
            if isinstance(line, ParseError):
                raise bad("expected DONE")
            assert isinstance(line, NeedData)
            session.wake.clear()  # dirty says what the wake-up was about
            if session.view is not None and (session.dirty or session.poll_due()):
                await session.pending_updates(None)
                if session._out:
                    await session.flush()
                    last_output = time.monotonic()
            now = time.monotonic()
            if now - started >= settings.imap_autologout:
                raise EndSession("autologout: idle for too long")  # RFC 2177: re-issue IDLE in 29 min
            if now - last_output >= settings.imap_idle_keepalive:
                await session.send(untagged_status("OK", "Still here"))
                last_output = now
            timeout = min(
                settings.imap_idle_keepalive - (now - last_output),
                settings.imap_poll_interval,
                settings.imap_autologout - (now - started),
            )
            if read is None:
                read = asyncio.ensure_future(session.conn.read_more(None))
            wake = asyncio.ensure_future(session.wake.wait())
            session.waiting = True
            try:
                done, _ = await asyncio.wait({read, wake}, timeout=max(timeout, 0.01), return_when="FIRST_COMPLETED")
            finally:
                session.waiting = False
                wake.cancel()
            if read in done:
                task, read = read, None
                task.result()  # raises ClientGone / connection errors
    finally:
        if read is not None:
            read.cancel()
            with contextlib.suppress(BaseException):
                await read


HANDLERS = {"IDLE": idle}
