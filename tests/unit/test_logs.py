"""Log output: text and JSON lines, extra fields, trace ids, secrets never written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from mailstack.services.common.logs import setup_logging
from opentelemetry.sdk.trace import TracerProvider


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    # setup_logging replaces the root handlers (pytest's capture handlers among them): restore them.
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def test_json_lines_with_extra_fields_and_masked_secrets(stream: io.StringIO) -> None:
    setup_logging("info", "json", stream)
    log = logging.getLogger("mailstack.test")
    log.debug("not shown")
    log.info(
        "delivered %d",
        2,
        extra={"account": "alice@example.test", "password": "hunter2", "url": "redis://:s3cr3t@redis:6379/0"},
    )
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "mailstack.test" and entry["message"] == "delivered 2"
    assert entry["timestamp"].endswith("+00:00")
    assert entry["account"] == "alice@example.test"
    assert entry["password"] == "***" and entry["url"] == "redis://:***@redis:6379/0"
    assert "hunter2" not in line and "s3cr3t" not in line and "trace_id" not in entry


def test_json_includes_active_span_ids(stream: io.StringIO) -> None:
    setup_logging("INFO", "json", stream)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("deliver") as span:
        logging.getLogger("mailstack.test").info("inside")
        ctx = span.get_span_context()
    entry = json.loads(stream.getvalue())
    assert entry["trace_id"] == format(ctx.trace_id, "032x")
    assert entry["span_id"] == format(ctx.span_id, "016x")


def test_text_lines_carry_fields_before_the_traceback(stream: io.StringIO) -> None:
    setup_logging("INFO", "text", stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("mailstack.test").exception("failed", extra={"uid": 4, "auth_token": "abc"})
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("ERROR mailstack.test: failed uid=4 auth_token=***")
    assert "RuntimeError: boom" in rest[-1]


def test_setup_is_idempotent_and_validates(stream: io.StringIO) -> None:
    setup_logging("INFO", "text", stream)
    setup_logging("WARNING", "json", stream)
    assert len(logging.getLogger().handlers) == 1
    with pytest.raises(ValueError, match="log level"):
        setup_logging("LOUD", "text", stream)
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "xml", stream)
