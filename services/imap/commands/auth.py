"""STARTTLS, LOGIN and AUTHENTICATE PLAIN (with SASL-IR)."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import TYPE_CHECKING

import grpc

from ..errors import from_grpc
from ..mailstore import throttled
from ..protocol import Authenticate, Command, Login, NeedData, ParseError
from ..protocol.encoder import tagged
from ..replies import EndSession, Reply, bad, no
from .misc import capabilities

if TYPE_CHECKING:
    from ..session import Session


async def starttls(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.2.1. Nothing the client pipelined behind STARTTLS is executed: the
    # connection drops it (common/stream_connection.py).
    if session.conn.tls or not session.conn.can_start_tls:
        raise bad("TLS is already active" if session.conn.tls else "STARTTLS is not available")
    await session.flush()
    await session.conn.start_tls(tagged(command.tag, "OK", "begin TLS negotiation now"))
    return Reply("", "")  # already answered


def _plaintext_refused(session: Session) -> bool:
    return not session.conn.tls and not session.settings.allow_plaintext_auth


async def _authenticate(
    session: Session, tag: str, username: str, password: str, authzid: str, method: str
) -> Reply | None:
    """The mailstore checks the password and counts the attempt for this IP and account across
    all protocols (ADR 0011); a throttled login is answered NO [UNAVAILABLE] (RFC 5530)."""
    services = session.services
    ip = session.conn.remote_ip
    try:
        account = await session.mailstore.authenticate(username, password, authzid, ip)
    except grpc.RpcError as e:
        error = from_grpc(e)
        refused = throttled(e)
        if error.code != "AUTHENTICATIONFAILED" and not refused:
            raise error from None
        session.auth_event("throttled" if refused else "failed", username, method)
        # slowed down, and a connection gets only a few tries (a refusal costs the mailstore no hashing)
        await asyncio.sleep(session.settings.imap_auth_failure_delay_ms / 1000)
        if refused:
            raise error from None
        session.auth_failures += 1
        if session.auth_failures >= session.settings.imap_auth_max_failures:
            await session.send(tagged(tag, "NO", "authentication failed", "AUTHENTICATIONFAILED"))
            raise EndSession("too many failed logins") from None
        raise error from None
    if not services.limits.login(account):
        session.auth_event("throttled", account, method)
        raise no("too many sessions for this account", "LIMIT")
    session.auth_method = method
    session.auth_event("ok", account, method)
    session.logged_in(account)
    return Reply("OK", "logged in", f"CAPABILITY {capabilities(session)}")


async def login(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.2.3 (refused before TLS: LOGINDISABLED is advertised then)
    assert isinstance(command.args, Login)
    if _plaintext_refused(session):
        raise no("use STARTTLS first", "PRIVACYREQUIRED")
    return await _authenticate(session, command.tag, command.args.username, command.args.password, "", "LOGIN")


async def authenticate(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.2.2, RFC 4959 SASL-IR, RFC 4616 PLAIN
    assert isinstance(command.args, Authenticate)
    if command.args.mechanism.upper() != "PLAIN":
        raise no("unsupported mechanism; use PLAIN", "CANNOT")
    if _plaintext_refused(session):
        raise no("use STARTTLS first", "PRIVACYREQUIRED")
    response = command.args.initial_response
    if response is None:
        await session.send(b"+ \r\n")  # an empty challenge (RFC 4616)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + session.read_timeout  # for the whole line, not per byte
        while True:
            line = session.conn.receiver.next_line()
            if isinstance(line, NeedData):
                try:
                    await session.conn.read_more(max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise EndSession("autologout: idle for too long") from None
                continue
            if isinstance(line, ParseError):
                raise bad("response line too long")
            response = line
            break
    if response.strip() == b"*":
        raise bad("authentication cancelled")  # RFC 9051 §6.2.2
    try:
        decoded = b"" if response == b"=" else base64.b64decode(response, validate=True)
        authzid, username, password = decoded.split(b"\0")
        names = (authzid.decode(), username.decode(), password.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad("invalid PLAIN response") from None
    return await _authenticate(session, command.tag, names[1], names[2], names[0], "PLAIN")
