"""The one place where IMAP commands are observed: a span per command (the parent of the mailstore
calls it makes, so a FETCH's trace reaches the blob read) and the command latency histogram."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from mailstack.services.common.metrics import COMMAND_SECONDS, SESSIONS
from mailstack.services.common.telemetry import tracing_enabled
from opentelemetry import trace
from opentelemetry.trace import SpanKind

tracer = trace.get_tracer("mailstack.imap")
sessions_open = 0  # kept by the server; read by the sessions gauge at scrape time
commands_slowed = 0  # commands held back by the per-connection rate limit (limits.CommandRate)
SESSIONS.labels("imap").set_function(lambda: sessions_open)


@contextmanager
def command_span(name: str, uid: bool) -> Iterator[None]:
    label = f"UID {name}" if uid else name
    histogram = COMMAND_SECONDS.labels("imap", label)
    start = time.perf_counter()
    try:
        if not tracing_enabled():  # no span nobody collects: commands such as NOOP or FETCH FLAGS are cheap
            yield
        else:
            with tracer.start_as_current_span(
                f"IMAP {label}", kind=SpanKind.SERVER, attributes={"imap.command": label}
            ):
                yield
    finally:
        histogram.observe(time.perf_counter() - start)
