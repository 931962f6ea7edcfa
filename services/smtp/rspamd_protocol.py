"""rspamd's HTTP protocol (`POST /checkv2`), as pure functions: the request and the verdict.

The request carries the message as its body and the SMTP envelope in headers (From, Rcpt per
recipient, IP, Helo, Queue-Id, MTA-Name: https://rspamd.com/doc/developers/protocol.html);
the reply is a JSON object with the action, the score and the symbols that matched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

ACTIONS = frozenset({"no action", "add header", "rewrite subject", "greylist", "soft reject", "reject"})
MAX_HEAD = 16 * 1024  # bytes of the HTTP status line and headers
MAX_BODY = 1024 * 1024  # bytes of the JSON verdict (a few KiB in practice)
_SYMBOL_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class ProtocolError(Exception):
    """rspamd's reply was not a verdict (bad status, bad JSON, unknown action, too large)."""


@dataclass(frozen=True)
class Envelope:
    sender: str  # "" for the null sender
    recipients: list[str]
    client_ip: str
    helo: str
    queue_id: str
    hostname: str  # ours (MTA-Name)


@dataclass(frozen=True)
class Verdict:
    action: str  # one of ACTIONS
    score: float
    required_score: float
    symbols: list[tuple[str, float]]  # (name, score), highest |score| first
    subject: str  # the rewritten subject (action "rewrite subject"), else ""
    message: str  # rspamd's text for the SMTP reply (messages.smtp_message), else ""


def _field(value: str) -> bytes:
    """A header value without control characters (the HELO and addresses come from the client)."""
    return "".join(c for c in value if c >= " " and c != "\x7f").encode("utf-8", "replace")[:1000]


def request(host: str, envelope: Envelope, size: int) -> bytes:
    """The HTTP/1.1 request head for a message of `size` bytes (the body follows it)."""
    lines = [
        b"POST /checkv2 HTTP/1.1",
        b"Host: " + _field(host),
        b"Connection: close",
        b"Content-Length: " + str(size).encode(),
        b"From: " + _field(envelope.sender),
        b"IP: " + _field(envelope.client_ip),
        b"Helo: " + _field(envelope.helo),
        b"Queue-Id: " + _field(envelope.queue_id),
        b"MTA-Name: " + _field(envelope.hostname),
    ]
    lines += [b"Rcpt: " + _field(r) for r in envelope.recipients]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_head(head: bytes) -> tuple[int, int | None]:
    """(status, Content-Length or None) of a response head ending in CRLF CRLF."""
    status_line, _, rest = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP status line: {status_line[:80]!r}")
    length: int | None = None
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            if not value.strip().isdigit():
                raise ProtocolError("bad Content-Length")
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise ProtocolError("chunked replies are not expected")  # rspamd sends a length
    if length is not None and length > MAX_BODY:
        raise ProtocolError(f"reply of {length} bytes")
    return int(parts[1]), length


def parse_verdict(body: bytes) -> Verdict:
    try:
        data = json.loads(body)
    except ValueError as err:
        raise ProtocolError(f"reply is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("action") not in ACTIONS:
        raise ProtocolError(f"no known action in the reply: {str(data)[:120]}")
    try:
        symbols = [
            (_SYMBOL_NAME.sub("", str(name))[:64], float(s.get("score", 0.0)))
            for name, s in dict(data.get("symbols") or {}).items()
            if isinstance(s, dict)
        ]
        score, required = float(data.get("score", 0.0)), float(data.get("required_score", 0.0))
    except (TypeError, ValueError) as err:
        raise ProtocolError(f"bad score in the reply: {err}") from None
    symbols.sort(key=lambda s: (-abs(s[1]), s[0]))
    messages = data.get("messages")
    message = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
    subject = data.get("subject", "")
    return Verdict(
        action=str(data["action"]),
        score=score,
        required_score=required,
        symbols=symbols,
        subject=subject if isinstance(subject, str) else "",
        message=message if isinstance(message, str) else "",
    )
