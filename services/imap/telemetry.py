"""The one place where IMAP commands are observed: a span per command (the parent of the mailstore
calls it makes, so a FETCH's trace reaches the blob read; it names the client, the user and TLS),
the command latency histogram and the count of commands by result."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mailstack.services.common.metrics import COMMAND_SECONDS, CONNECTIONS, SESSIONS, count_command
from mailstack.services.common.span_attributes import Attributes
from mailstack.services.common.telemetry import tracing_enabled
from opentelemetry import trace
from opentelemetry.trace import SpanKind

tracer = trace.get_tracer("mailstack.imap")
sessions_open = 0  # kept by the server; read by the sessions gauge at scrape time
commands_slowed = 0  # commands held back by the per-connection rate limit (limits.CommandRate)
SESSIONS.labels("imap").set_function(lambda: sessions_open)
CONNECTIONS_ADMITTED = CONNECTIONS.labels("imap")


class CommandResult:
    """What the command answered: OK, NO or BAD (set by the caller; "error" when it raised)."""

    def __init__(self) -> None:
        self.status = ""


@contextmanager
def command_span(name: str, uid: bool, attributes: Callable[[], Attributes]) -> Iterator[CommandResult]:
    """`attributes` is called only when a span is recorded (connection_attributes)."""
    label = f"UID {name}" if uid else name
    histogram = COMMAND_SECONDS.labels("imap", label)
    result = CommandResult()
    start = time.perf_counter()
    try:
        if not tracing_enabled():  # no span nobody collects: commands such as NOOP or FETCH FLAGS are cheap
            yield result
        else:
            with tracer.start_as_current_span(
                f"IMAP {label}", kind=SpanKind.SERVER, attributes={"imap.command": label, **attributes()}
            ) as span:
                yield result
                span.set_attribute("imap.status", result.status or "OK")
    finally:
        histogram.observe(time.perf_counter() - start)
        count_command("imap", label, result.status.lower() or "error")
