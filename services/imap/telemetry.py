"""The one place where IMAP commands are observed: a span per command (the parent of the mailstore
calls it makes, so a FETCH's trace reaches the blob read; it names the client, the user and TLS),
the command latency histogram and the count of commands by result."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from mailstack.services.common.metrics import COMMAND_SECONDS, COMMANDS, CONNECTIONS, SESSIONS
from mailstack.services.common.span_attributes import Attributes
from mailstack.services.common.telemetry import tracing_enabled
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram

tracer = trace.get_tracer("mailstack.imap")
sessions_open = 0  # kept by the server; read by the sessions gauge at scrape time
commands_slowed = 0  # commands held back by the per-connection rate limit (limits.CommandRate)
SESSIONS.labels("imap").set_function(lambda: sessions_open)
CONNECTIONS_ADMITTED = CONNECTIONS.labels("imap")


class CommandResult:
    """What the command answered: OK, NO or BAD (set by the caller; "error" when it raised)."""

    def __init__(self) -> None:
        self.status = ""


def command_span(name: str, uid: bool, attributes: Callable[[], Attributes]) -> AbstractContextManager[CommandResult]:
    """`attributes` is called only when a span is recorded (connection_attributes)."""
    label = f"UID {name}" if uid else name
    if not tracing_enabled():  # no span nobody collects: commands such as NOOP or FETCH FLAGS are cheap
        return _Untraced(label)
    return _traced(label, attributes)


class _Untraced:
    """A command observed without a span: a plain context manager (no generator), per command."""

    __slots__ = ("label", "result", "start")

    def __init__(self, label: str) -> None:
        self.label, self.result, self.start = label, CommandResult(), 0.0

    def __enter__(self) -> CommandResult:
        self.start = time.perf_counter()
        return self.result

    def __exit__(self, *_exc: object) -> None:
        _observe(self.label, self.start, self.result)


@contextmanager
def _traced(label: str, attributes: Callable[[], Attributes]) -> Iterator[CommandResult]:
    result = CommandResult()
    start = time.perf_counter()
    try:
        with tracer.start_as_current_span(
            f"IMAP {label}", kind=SpanKind.SERVER, attributes={"imap.command": label, **attributes()}
        ) as span:
            yield result
            span.set_attribute("imap.status", result.status or "OK")
    finally:
        _observe(label, start, result)


def _observe(label: str, start: float, result: CommandResult) -> None:
    _timer(label).observe(time.perf_counter() - start)
    _counter(label, result.status.lower() or "error").inc()


# The metrics' children by label, looked up once (labels() takes a lock and builds a key per call);
# labels are the registry's command names, with and without UID, and results: a few hundred at most.
@functools.lru_cache(maxsize=512)
def _timer(label: str) -> Histogram:
    return COMMAND_SECONDS.labels("imap", label)


@functools.lru_cache(maxsize=1024)
def _counter(label: str, result: str) -> Counter:
    return COMMANDS.labels("imap", label, result)
