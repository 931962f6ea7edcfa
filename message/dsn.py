"""Delivery status notifications: RFC 3464 multipart/report (RFC 6522) with the original headers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from mailstack.message.compose import new_message_id, rfc5322_date

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"^\s*([245])\d\d\b")


class FailedRecipient(Protocol):
    """What a DSN reports of one recipient (the outbound queue's RecipientStatus fits)."""

    @property
    def address(self) -> str: ...
    @property
    def last_error(self) -> str: ...  # the remote reply or why delivery stopped; "" = unknown
    @property
    def remote_mta(self) -> str: ...  # "" = none reached


def status_code(error: str) -> str:
    """The enhanced status code (RFC 3463) in the remote reply, else one implied by its class."""
    match = _STATUS.search(error)
    if match:
        return match.group(0)
    if "expired" in error:
        return "4.4.7"  # RFC 3463: delivery time expired
    reply = _REPLY_CODE.match(error)
    return f"{reply.group(1)}.0.0" if reply else "5.0.0"


def build_dsn(
    hostname: str,
    sender: str,
    failed: Sequence[FailedRecipient],
    original_headers: bytes,
    arrival: str,
) -> bytes:
    """A failure DSN to sender; it travels with the null sender so it can never bounce (RFC 3464 §2, 5321 §4.5.5)."""
    boundary = f"dsn-{new_message_id(hostname).split('@')[0]}"
    text = [
        f"This is the mail system at {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients:",
        "",
        *(f"<{r.address}>: {' '.join((r.last_error or 'delivery failed').split())}" for r in failed),
    ]
    # RFC 3464 §2.2: per-message fields, a blank line, then one block per recipient.
    fields = [f"Reporting-MTA: dns; {hostname}", f"Arrival-Date: {arrival}"]
    for r in failed:
        fields += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            "Action: failed",
            f"Status: {status_code(r.last_error)}",
        ]
        if r.remote_mta:
            fields.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.last_error and _REPLY_CODE.match(r.last_error):
            fields.append(f"Diagnostic-Code: smtp; {' '.join(r.last_error.split())}")
    headers = original_headers.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").rstrip(b"\r\n") + b"\r\n"
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {rfc5322_date()}",
        f"Message-ID: <{new_message_id(hostname)}>",
        "Auto-Submitted: auto-replied",  # RFC 3834: nobody auto-answers this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        *text,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *fields,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
        "",
    ]
    tail = f"\r\n--{boundary}--\r\n"
    return "\r\n".join(head).encode() + headers + tail.encode()
