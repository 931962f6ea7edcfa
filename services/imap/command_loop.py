"""The command loop of one IMAP session: read events from the receiver, answer framing errors,
and run each command through its registry entry (state check, handler, the untagged updates
RFC 9051 §7.5.1 allows after it, the tagged completion)."""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc
from mailstack.services.common.metrics import OTHER_COMMAND, count_command

from . import telemetry
from .commands.notify import deliver, wait_for_client
from .errors import from_grpc
from .protocol import Command, Event, LiteralTooBig, NeedData, NeedLiteral, ParseError
from .protocol.encoder import continuation, tagged, untagged_status
from .registry import COMMANDS
from .replies import EndSession, ImapError, Reply, no
from .session import Session, State

log = logging.getLogger("mailstack.imap")
# Commands whose handler answers an invalid mailbox name itself: SELECT and EXAMINE deselect
# first (RFC 9051 §6.3.2), whatever the name.
_NAME_CHECKED_BY_HANDLER = frozenset({"SELECT", "EXAMINE"})


async def run(session: Session, greeting: bytes) -> None:
    """Serve commands until LOGOUT (or until the client leaves: ClientGone, EndSession)."""
    await session.send(greeting)
    loop = asyncio.get_running_loop()
    # The timeout is a deadline for a whole command, set when the wait for it starts: a client
    # that sends a byte now and then (slowloris) does not keep its connection for ever.
    deadline: float | None = None
    while session.state != State.LOGOUT:
        event = session.conn.receiver.next_event()
        if isinstance(event, NeedData):
            if deadline is None:
                deadline = loop.time() + session.read_timeout
            await _read_more(session, max(0.0, deadline - loop.time()))
            continue
        deadline = None
        if isinstance(event, Command):
            delay = session.rate.delay()
            if delay > 0:
                telemetry.commands_slowed += 1  # slowed, never refused
                await asyncio.sleep(delay)
            await execute(session, event)
        else:
            await session.send(_framing_answer(event))
            if isinstance(event, NeedLiteral):
                session.conn.awaiting_literal()


async def _read_more(session: Session, wait: float) -> None:
    session.waiting = True
    try:
        if session.notify is None:
            await session.conn.read_more(wait)
        else:
            await wait_for_client(session, wait)  # RFC 5465: notifications go out meanwhile
    except TimeoutError:
        raise EndSession("autologout: idle for too long") from None
    finally:
        session.waiting = False


def _framing_answer(event: Event) -> bytes:
    """The answer to a receiver event that is not a command."""
    if isinstance(event, NeedLiteral):
        # RFC 3501 §7.5: a synchronizing literal waits for our continuation
        return continuation("ready for literal data")
    if isinstance(event, LiteralTooBig):
        # RFC 7888 §4 / RFC 9051 §7.1: refused literal; the receiver drops its octets
        if event.tag:
            return tagged(event.tag, "NO", "literal too big", "TOOBIG")
        return untagged_status("NO", "literal too big", "TOOBIG")
    assert isinstance(event, ParseError)
    if event.fatal:
        raise EndSession(event.message)
    count_command("imap", OTHER_COMMAND, "bad")  # unknown, or not parsed: no trusted name to count it under
    return tagged(event.tag, "BAD", event.message) if event.tag else untagged_status("BAD", event.message)


def refuse_invalid_name(command: Command) -> Reply:
    """A mailbox name that fits the grammar but is not valid modified UTF-7 names no mailbox: NO
    [CANNOT] (it can never succeed), and for LIST/LSUB an empty OK (RFC 9051 §7.1.5: BAD is
    for syntax errors)."""
    if command.name in ("LIST", "LSUB"):
        return Reply("OK", f"{command.name} completed")
    raise no(command.invalid_mailbox, "CANNOT")


async def execute(session: Session, command: Command) -> None:
    entry = COMMANDS.get(command.name)
    if entry is None or session.state not in entry.states:
        text = f"{command.name} not allowed in the {session.state.value} state"
        count_command("imap", command.name if entry is not None else OTHER_COMMAND, "bad")
        await session.send(tagged(command.tag, "BAD", text))
        return
    reply: Reply | ImapError
    attributes = functools.partial(session.conn.span_attributes, session.account)
    with telemetry.command_span(command.name, command.uid, attributes) as done:
        try:
            if command.invalid_mailbox and command.name not in _NAME_CHECKED_BY_HANDLER:
                reply = refuse_invalid_name(command)
            else:
                reply = await entry.handler(session, command) or Reply()
        except ImapError as e:
            reply = e
        except grpc.RpcError as e:
            reply = from_grpc(e)
            if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS):
                log.info("command failed", extra={"command": command.name, "grpc_code": e.code().name})
        if session.state == State.SELECTED and session.view is not None:
            await session.pending_updates(entry.always_refresh, command.uid or entry.expunge_during)
        await deliver(session, command.uid or entry.expunge_during)  # RFC 5465 §5: NOTIFY's news
        done.status = reply.status or "OK"
        if reply.status:  # "" when the handler answered already (STARTTLS)
            session.untagged(tagged(command.tag, reply.status, reply.text, reply.code))
        await session.flush()
