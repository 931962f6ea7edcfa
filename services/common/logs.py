"""Logging: text for people, JSON lines for collectors; secrets are masked in both.

Extra fields come from `log.info("delivered", extra={"account": a, "uid": u})`.
A field whose name says it is secret (password, token, ...) is never written, and
passwords inside URL values are masked, so a careless `extra=` cannot leak one.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

from mailstack.services.common.config import mask_url

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_WORDS = ("password", "passwd", "secret", "token", "authorization", "credential", "private_key", "tls_key")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _safe(name: str, value: Any) -> Any:
    if _is_secret(name):
        return "***"
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: _safe(k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


def _trace_ids() -> dict[str, str]:
    """trace_id/span_id of the active OpenTelemetry span, so logs and traces join up."""
    try:
        from opentelemetry import trace
    except ImportError:  # telemetry is optional at runtime
        return {}
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, trace ids, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_trace_ids())
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2025-01-01 12:00:00,000 INFO mailstack.smtp: delivered account=alice@example.test uid=4`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {**_trace_ids(), **_extras(record)}
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep key=value on the message line, before a traceback
        return head + " " + " ".join(f"{k}={v}" for k, v in fields.items()) + sep + tail


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger (idempotent: replaces the handlers set up before)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
    formatters: dict[str, type[logging.Formatter]] = {"text": TextFormatter, "json": JsonFormatter}
    if fmt not in formatters:
        raise ValueError(f"log format: expected text or json, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatters[fmt]())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)  # not closed: it may belong to someone else (pytest's capture)
    root.addHandler(handler)
    root.setLevel(numeric)
