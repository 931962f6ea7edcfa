"""Trace headers added at final delivery: Return-Path and Received (RFC 5321 §4.4, RFC 3848)."""

from __future__ import annotations

import datetime
import email.utils
import re

# Anything that could break the header (CR, LF, other controls) is replaced.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> str:
    # Client-supplied text (HELO name, addresses) must not inject header lines.
    return _UNSAFE.sub("?", text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def with_protocol(esmtp: bool, tls: bool, authenticated: bool) -> str:
    """The "with" keyword of RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def trace_headers(
    *,
    sender: str,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipients: list[str],
    now: datetime.datetime | None = None,
) -> bytes:
    """Return-Path and Received header lines (CRLF-terminated) to prepend to a message."""
    now = now or datetime.datetime.now(datetime.UTC).astimezone()
    date = email.utils.format_datetime(now)
    # "for" only with one recipient: listing all would disclose Bcc recipients.
    for_clause = f"\r\n\tfor <{_clean(recipients[0])}>" if len(recipients) == 1 else ""
    received = (
        f"Received: from {_clean(helo) or 'unknown'} ([{_clean(client_ip)}])\r\n"
        f"\tby {_clean(hostname)} (mailstack) with {protocol} id {queue_id}"
        f"{for_clause};\r\n\t{date}\r\n"
    )
    return f"Return-Path: <{_clean(sender)}>\r\n{received}".encode()
