"""The one place where IMAP commands are observed: a span per command will be opened here when
OpenTelemetry arrives (its own issue); for now counts and latency are kept for metrics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

commands: Counter[str] = Counter()  # command name -> count
seconds: dict[str, float] = {}  # command name -> total seconds
sessions_open = 0


@contextmanager
def command_span(name: str, uid: bool) -> Iterator[None]:
    label = f"UID {name}" if uid else name
    start = time.perf_counter()
    try:
        yield
    finally:
        commands[label] += 1
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start
