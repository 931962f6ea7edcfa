"""aiosmtpd's SMTP protocol, subclassed where a handler hook is not enough.

What changes here, and why a hook cannot do it:
- connection limits (421 4.7.0) must act before the greeting;
- every reply gets an enhanced status code (RFC 2034) on its way out;
- AUTH is refused outright on the inbound port;
- DATA is read by `data.read_data` (1000-octet lines, bare CR/LF, sizes), and BDAT (RFC 3030
  CHUNKING, which aiosmtpd lacks) by `data.read_chunk` with the same rules;
- timeouts answer 421 4.4.2 before closing (RFC 5321 §4.5.3.2);
- the server can ask idle sessions to leave at shutdown.
The SMTP grammar itself stays aiosmtpd's.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, syntax
from mailstack.services.common.auth_log import connection_refused, local_ip_of, new_session_id
from mailstack.services.common.config import Settings
from mailstack.services.common.connection_limits import ConnectionLimiter
from mailstack.services.common.metrics import (
    COMMAND_SECONDS,
    CONNECTIONS,
    OTHER_COMMAND,
    SESSIONS,
    count_command,
    count_tls_handshake,
)
from mailstack.services.smtp import replies
from mailstack.services.smtp.data import DataProblem, check_lines, read_chunk, read_data
from mailstack.services.smtp.handler import SmtpHandler, count
from mailstack.services.smtp.inflight import Reservation

log = logging.getLogger("mailstack.smtp")

_PROBLEM_REPLIES = {
    DataProblem.TOO_BIG: replies.TOO_BIG,
    DataProblem.LINE_TOO_LONG: replies.LINE_TOO_LONG,
    DataProblem.BARE_NEWLINE: replies.BARE_NEWLINE,
    DataProblem.INSUFFICIENT_STORAGE: replies.INSUFFICIENT_STORAGE,
}


_OPEN_SESSIONS = SESSIONS.labels("smtp")
_CONNECTIONS = CONNECTIONS.labels("smtp")


_TIMED: dict[tuple[type, str], Callable[[Any, str], Awaitable[None]]] = {}


def _timed(cls: type, name: str) -> Callable[[Any, str], Awaitable[None]]:
    """cls.smtp_<COMMAND> observed in the command latency histogram (aiosmtpd calls it by name).

    Built once per class and bound per connection (wrapping anew per connection cost ~0.03 ms)."""
    if (cls, name) not in _TIMED:
        _TIMED[cls, name] = _timed_method(getattr(cls, name), name.removeprefix("smtp_"))
    return _TIMED[cls, name]


def _timed_method(method: Callable[[Any, str], Awaitable[None]], command: str) -> Callable[[Any, str], Awaitable[None]]:
    histogram = COMMAND_SECONDS.labels("smtp", command)

    @functools.wraps(method)  # keeps the docstring and @syntax attributes that HELP reads
    async def timed(self: Any, arg: str) -> None:
        self.last_reply = ""
        self.in_command = True
        result = "error"  # unless the command returns (a dropped client, a failed STARTTLS handshake)
        start = time.perf_counter()
        try:
            await method(self, arg)
            result = reply_result(self.last_reply)
        finally:
            self.in_command = False
            histogram.observe(time.perf_counter() - start)
            count_command("smtp", command, result)
            if command == "STARTTLS" and self.last_reply == "220":  # the handshake followed the 220
                count_tls_handshake("smtp", result == "ok")

    return timed


def reply_result(code: str) -> str:
    """A command's result label from its last reply code (RFC 5321 §4.2.1: the first digit)."""
    return {"2": "ok", "3": "ok", "4": "temporary", "5": "permanent"}.get(code[:1], "error")


_NAMES: dict[type, list[str]] = {}


def _command_and_auth_names(cls: type) -> list[str]:
    if cls not in _NAMES:
        _NAMES[cls] = [name for name in dir(cls) if name.startswith(("smtp_", "auth_"))]
    return _NAMES[cls]


class SmtpProtocol(SMTP):
    line_length_limit = 1001  # the StreamReader limit; read_data enforces 1000 (RFC 5321 §4.5.3.1.6)

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ finds its command and AUTH methods with dir() and inspect.getmembers()
        # on every new connection, which reads every attribute, properties included (~0.06 ms per
        # connection); the names it looks for are the class's, listed once.
        return _command_and_auth_names(type(self))

    def __init__(
        self,
        handler: SmtpHandler,
        settings: Settings,
        limiter: ConnectionLimiter,
        sessions: set[SmtpProtocol],
        starttls_context: ssl.SSLContext | None,
        client_address: tuple[str, int] | None = None,
    ) -> None:
        kind = handler.kind
        super().__init__(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident="ESMTP mailstack",
            tls_context=None if kind.implicit_tls else starttls_context,
            timeout=settings.smtp_command_timeout,
            # On 465 the transport is TLS from the start, which aiosmtpd does not see.
            auth_require_tls=not (kind.implicit_tls or settings.allow_plaintext_auth),
            loop=asyncio.get_running_loop(),
        )
        # aiosmtpd keeps these limits in one dict shared by all sessions; give each its own.
        self._bdat_buffer = io.BytesIO()  # the chunks of a BDAT transaction so far
        self._bdat_size = 0
        self._bdat_problem: DataProblem | None = None
        self._deadline = 0.0  # see _reset_timeout
        self._timer_armed = False
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self._smtp_methods = {name: _timed(type(self), f"smtp_{name}").__get__(self) for name in self._smtp_methods}
        self.handler = handler
        # This transaction's share of the process's in-flight budget (inflight.py).
        self.room = Reservation(handler.inflight)
        self.limiter = limiter
        self.sessions = sessions
        self.data_timeout = float(settings.smtp_data_timeout)
        # from a PROXY header (ADR 0007): what limits, AUTH braking, logs and Received: use
        self.client_address = client_address
        self.client_ip = ""
        self.admitted = False
        self.refused = False
        self.session_id = new_session_id()  # joins this connection's login and logout lines
        self.auth_method = ""  # PLAIN or LOGIN once AUTH succeeded
        self.in_data = False
        self._greeted = False
        self._helo_reply = False
        self.last_reply = ""  # the code of the last reply sent (a command's result in the metrics)
        self.in_command = False  # inside a command method (else a reply is aiosmtpd's own refusal)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd cancels and re-creates a timer on every command and, through read_data, on
        # every DATA line; moving a deadline is cheaper, and the one timer checks it when it fires.
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is not None and self._timer_armed and handle.when() <= self._deadline:
            return
        if handle is not None:
            handle.cancel()
        self._timer_armed = True
        self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_due)

    def _data_pause(self) -> None:
        """Inside DATA or a BDAT chunk the client may pause for data_timeout (RFC 5321 §4.5.3.2.5)."""
        self._reset_timeout(self.data_timeout)

    def _timeout_due(self) -> None:
        if self.loop.time() < self._deadline:  # activity since the timer was set: wait on
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_due)
            return
        self._timer_armed = False
        self._timeout_cb()

    @property
    def tls_active(self) -> bool:
        return self.handler.kind.implicit_tls or self._tls_protocol is not None

    # ---------------------------------------------------------------- connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and self._original_transport is None:  # a new connection, not STARTTLS
            peer = self.client_address or transport.get_extra_info("peername")
            self.client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            refusal = self.limiter.refusal(self.client_ip)  # the per-IP share keeps room for other senders
            if refusal is not None:
                self.refused = True
                local_ip = local_ip_of(transport.get_extra_info("sockname"))
                connection_refused("smtp", refusal, self.client_ip, local_ip)
                count("rejected", "too_many_connections")
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(replies.TOO_MANY_CONNECTIONS.encode() + b"\r\n")
                transport.close()
                return
            self.limiter.acquire(self.client_ip)
            self.admitted = True
            self.sessions.add(self)
            _OPEN_SESSIONS.inc()
            _CONNECTIONS.inc()
        super().connection_made(transport)
        if self.client_address is not None and self.session is not None:
            # aiosmtpd took the balancer's address (again after STARTTLS); it annotates peer as str
            self.session.peer = self.client_address  # type: ignore[assignment]

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return  # aiosmtpd never saw this connection
        if self.admitted:
            self.admitted = False
            if self.auth_method and self.session is not None and self.session.authenticated:
                self.handler.log_logout(self, str(self.session.auth_data))
            self.limiter.release(self.client_ip)
            self.sessions.discard(self)
            _OPEN_SESSIONS.dec()
        self.room.release()
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(replies.TIMEOUT.encode() + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated

    def close_for_shutdown(self) -> None:
        """Say 421 and close (RFC 5321 §3.8)."""
        if self.transport is not None and not self.transport.is_closing():
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(replies.SHUTTING_DOWN.encode() + b"\r\n")
            self.transport.close()

    # ---------------------------------------------------------------- replies

    async def push(self, status: AnyStr) -> None:
        self.last_reply = status[:3] if isinstance(status, str) else status[:3].decode("ascii", "replace")
        if self._greeted and not self.in_command:
            # aiosmtpd refused the line before any command method ran (unknown command, line too
            # long, not ASCII): counted under one label, whatever the client sent.
            count_command("smtp", OTHER_COMMAND, reply_result(self.last_reply))
        if isinstance(status, str):
            if not self._greeted:
                self._greeted = True  # the greeting has no enhanced code
            elif not self._helo_reply:
                status = replies.enhance(status)
        await super().push(status)

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        self._helo_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._helo_reply = False

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self._helo_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._helo_reply = False

    # ---------------------------------------------------------------- AUTH

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if not self.handler.kind.submission:
            await self.push(replies.AUTH_NOT_HERE)  # inbound MX: RFC 4954 AUTH is for submission only
            return
        await super().smtp_AUTH(arg)

    # ---------------------------------------------------------------- DATA

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self._bdat_size or self._bdat_problem is not None:
            await self.push("503 5.5.1 Error: DATA within a BDAT transaction")  # RFC 3030 §3
            return
        self.in_data = True
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self._data_pause()  # the wait for the first line is a DATA pause too, not a command wait
            result = await read_data(self._reader, self.data_size_limit or 0, self._data_pause, self.room)
            self._reset_timeout()
            if result.problem is not None:
                status = self._refuse(result.problem)
            else:
                self.envelope.content = result.content
                self.envelope.original_content = result.content
                status = await self._call_handler_hook("DATA")
            del result  # the envelope held the only other reference; it is replaced next
            self._set_post_data_state()
            await self.push(status)
        finally:
            self.in_data = False
            self.room.release()  # also when the client went away or the mailstore call failed

    # ---------------------------------------------------------------- BDAT

    @syntax("BDAT chunk-size [LAST]")
    async def smtp_BDAT(self, arg: str) -> None:
        # Command: RFC 3030 §2 (CHUNKING): exactly chunk-size octets follow, no dot-stuffing
        words = arg.split()
        well_formed = 1 <= len(words) <= 2 and words[0].isdigit() and len(words[0]) <= 12
        if not well_formed or (len(words) == 2 and words[1].upper() != "LAST"):
            # Without a size the chunk cannot be skipped: its bytes would be read as commands.
            await self.push("501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing")
            assert self.transport is not None
            self.transport.close()
            return
        size, last = int(words[0]), len(words) == 2
        refusal = self._bdat_refusal()
        if refusal is None:
            self._bdat_admit(size)
        keep = refusal is None and self._bdat_problem is None
        self.in_data = True
        try:
            self._data_pause()
            await read_chunk(self._reader, size, self._bdat_buffer if keep else None, self._data_pause)
            self._reset_timeout()
        except BaseException:
            self.room.release()  # the client went away mid-chunk
            raise
        finally:
            self.in_data = False
        if refusal is not None:
            await self.push(refusal)
            return
        if self._bdat_problem is not None:
            # Over the size limit: the transaction fails at this chunk; later ones find no RCPT.
            status = self._refuse(self._bdat_problem)
            self._set_post_data_state()
            await self.push(status)
            return
        self._bdat_size += size
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        await self._bdat_last()

    def _bdat_refusal(self) -> str | None:
        """Why no chunk may be taken yet (its octets are read and dropped)."""
        if not self.session or not self.session.host_name:
            return "503 5.5.1 Error: send HELO first"
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            return "503 5.5.1 Error: need RCPT command"
        return None

    def _bdat_admit(self, size: int) -> None:
        """Reserve room for `size` more octets; over the size limit or the budget the transaction fails
        (RFC 3030 §2: the chunk is still read) and nothing of it is kept."""
        limit = self.data_size_limit or 0
        if self._bdat_problem is None and limit and self._bdat_size + size > limit:
            self._bdat_problem = DataProblem.TOO_BIG
        if self._bdat_problem is None and not self.room.cover(self._bdat_size + size):
            self._bdat_problem = DataProblem.INSUFFICIENT_STORAGE
        if self._bdat_problem is not None:
            self._bdat_buffer = io.BytesIO()  # keep nothing of a failed transaction
            self.room.release()

    async def _bdat_last(self) -> None:
        """BDAT LAST: the message is the chunks so far, handed to the DATA hook."""
        assert self.envelope is not None
        content = self._bdat_buffer.getvalue()  # shares the buffer, no copy
        self._bdat_buffer = io.BytesIO()
        try:
            problem = check_lines(content)
            if problem is not None:
                status = self._refuse(problem)
            else:
                self.envelope.content = content
                self.envelope.original_content = content
                status = await self._call_handler_hook("DATA")
            del content
            self._set_post_data_state()
            await self.push(status)
        finally:
            self.room.release()

    def _refuse(self, problem: DataProblem) -> str:
        """Count and log a transaction refused for its content (the handler logs the others)."""
        count("rejected", problem.value)
        reply = _PROBLEM_REPLIES[problem]
        fields = {"remote_ip": self.client_ip, "result": problem.value, "reply": reply}
        log.info("smtp transaction refused", extra=fields)
        return reply

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd: unannotated; runs also on RSET, HELO/EHLO and STARTTLS
        self._bdat_buffer = io.BytesIO()
        self._bdat_size = 0
        self._bdat_problem = None
        self.room.release()

    def __repr__(self) -> str:
        return f"SmtpProtocol({self.handler.kind.name}, {self.client_ip})"


def protocol_factory(
    handler: SmtpHandler,
    settings: Settings,
    limiter: ConnectionLimiter,
    sessions: set[SmtpProtocol],
    starttls_context: ssl.SSLContext | None,
) -> Callable[[tuple[str, int] | None], SmtpProtocol]:
    """The protocol is built knowing the client's address when a PROXY header gave it."""
    return lambda address: SmtpProtocol(handler, settings, limiter, sessions, starttls_context, address)
