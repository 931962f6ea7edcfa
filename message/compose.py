"""Build an RFC 5322 message from the Send API's structured input, and read the addresses of a raw one.

The stdlib's EmailMessage with the SMTP policy does the encodings: RFC 2047 encoded words
for non-ASCII headers and display names, RFC 2231 for non-ASCII file names, quoted-printable
or base64 bodies (RFC 2045), CRLF line ends.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from typing import Protocol

# Headers the structured input sets itself; a caller's extra header may not replace them.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in ("From", "Reply-To", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "MIME-Version",
              "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Sender", "Return-Path")
)  # fmt: skip
HEADER_NAME = re.compile(r"\A[!-9;-~]+\Z")  # RFC 5322 §3.6.8 ftext


class ExtraHeader(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> str: ...


class Attachment(Protocol):
    @property
    def filename(self) -> str: ...
    @property
    def content_type(self) -> str: ...  # "" = application/octet-stream
    @property
    def content_id(self) -> str: ...  # set: an inline part (multipart/related)
    @property
    def data(self) -> bytes: ...


class StructuredMessage(Protocol):
    """The Send API's structured input (send.proto's StructuredMessage fits), plus a `from` field
    ("Name <addr>" or "addr") that a Protocol cannot name because it is a Python keyword."""

    @property
    def reply_to(self) -> Sequence[str]: ...
    @property
    def to(self) -> Sequence[str]: ...
    @property
    def cc(self) -> Sequence[str]: ...
    @property
    def bcc(self) -> Sequence[str]: ...  # recipients only, never a header
    @property
    def subject(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def html(self) -> str: ...
    @property
    def attachments(self) -> Sequence[Attachment]: ...
    @property
    def headers(self) -> Sequence[ExtraHeader]: ...


class ComposeError(ValueError):
    """The input cannot become a valid message; the text says why (INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class Composed:
    data: bytes
    from_address: str
    recipients: list[str]
    message_id: str  # without <>


def rfc5322_date(now: float | None = None) -> str:
    when = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return email.utils.format_datetime(when)


def new_message_id(domain: str) -> str:
    return email.utils.make_msgid(domain=domain or "localhost")[1:-1]


def _address(text: str, what: str) -> str:
    _name, address = email.utils.parseaddr(text)
    if "@" not in address or address.startswith("@") or address.endswith("@") or any(c.isspace() for c in address):
        raise ComposeError(f"invalid {what} address {text!r}")
    return address


def build(structured: StructuredMessage, now: float | None = None) -> Composed:
    """RFC 5322 + MIME from the structured fields: text and html become multipart/alternative,
    attachments make it multipart/mixed (inline parts with a Content-ID: multipart/related)."""
    from_text: str = getattr(structured, "from")  # "from" is a Python keyword
    if not from_text:
        raise ComposeError("from is required")
    sender = _address(from_text, "from")
    recipients = [
        _address(a, kind)
        for kind, group in (("to", structured.to), ("cc", structured.cc), ("bcc", structured.bcc))
        for a in group
    ]
    if not recipients:
        raise ComposeError("at least one of to, cc, bcc is required")
    message = EmailMessage(policy=email.policy.SMTP)
    message_id = new_message_id(sender.rsplit("@", 1)[1])
    try:
        _set_headers(message, structured, from_text, message_id, now)
    except (ValueError, TypeError, IndexError) as exc:  # the header registry's parse errors
        if isinstance(exc, ComposeError):
            raise
        raise ComposeError(str(exc)) from None
    _set_body(message, structured.text, structured.html)
    for attachment in structured.attachments:
        _attach(message, attachment)
    return Composed(message.as_bytes(policy=email.policy.SMTP), sender, recipients, message_id)


def _set_headers(
    message: EmailMessage, structured: StructuredMessage, from_text: str, message_id: str, now: float | None
) -> None:
    message["From"] = from_text
    for name, values in (("Reply-To", structured.reply_to), ("To", structured.to), ("Cc", structured.cc)):
        if values:
            message[name] = ", ".join(values)
    message["Subject"] = structured.subject
    message["Date"] = rfc5322_date(now)
    message["Message-ID"] = f"<{message_id}>"
    for header in structured.headers:
        if not HEADER_NAME.match(header.name) or header.name.lower() in RESERVED_HEADERS:
            raise ComposeError(f"header {header.name!r} cannot be set")
        if "\r" in header.value or "\n" in header.value:
            raise ComposeError(f"header {header.name!r}: line breaks are not allowed")
        message[header.name] = header.value


def _set_body(message: EmailMessage, text: str, html: str) -> None:
    if text or not html:
        message.set_content(text or "", cte="quoted-printable" if not text.isascii() else None)
        if html:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html, subtype="html")


def _attach(message: EmailMessage, attachment: Attachment) -> None:
    maintype, _, subtype = (attachment.content_type or "application/octet-stream").partition("/")
    if not maintype or not subtype:
        raise ComposeError(f"invalid content type {attachment.content_type!r}")
    cid = f"<{attachment.content_id.strip('<>')}>" if attachment.content_id else None
    disposition = "inline" if cid else "attachment"
    filename = attachment.filename or None
    if maintype == "text":
        text = attachment.data.decode("utf-8", "replace")
        message.add_attachment(text, subtype=subtype, filename=filename, disposition=disposition, cid=cid)
    else:
        message.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=filename, disposition=disposition, cid=cid
        )


@dataclass(frozen=True, slots=True)
class RawInfo:
    from_address: str
    recipients: list[str]  # To + Cc + Bcc
    message_id: str  # "" when the message has none
    has_date: bool
    has_bcc: bool


def raw_info(data: bytes) -> RawInfo:
    header = BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    froms = email.utils.getaddresses(header.get_all("From", []))
    if len(froms) != 1 or "@" not in froms[0][1]:
        raise ComposeError("the message needs exactly one From address")
    recipients = [a for _, a in email.utils.getaddresses(
        [*header.get_all("To", []), *header.get_all("Cc", []), *header.get_all("Bcc", [])]) if "@" in a]  # fmt: skip
    message_id = str(header.get("Message-ID", "")).strip().strip("<>")
    return RawInfo(froms[0][1], recipients, message_id, header.get("Date") is not None, "Bcc" in header)


def complete_raw(data: bytes, info: RawInfo, now: float | None = None) -> tuple[bytes, str]:
    """Add a missing Message-ID and Date (RFC 5322 §3.6: Date is required), drop Bcc (RFC 5322 §3.6.3)."""
    head_end = data.find(b"\r\n\r\n")
    head, body = (data[: head_end + 2], data[head_end + 2 :]) if head_end >= 0 else (data, b"")
    if info.has_bcc:
        head = re.sub(rb"(?im)^bcc:.*\r\n(?:[ \t].*\r\n)*", b"", head)
    message_id = info.message_id
    extra = b""
    if not message_id:
        message_id = new_message_id(info.from_address.rsplit("@", 1)[1])
        extra += f"Message-ID: <{message_id}>\r\n".encode()
    if not info.has_date:
        extra += f"Date: {rfc5322_date(now)}\r\n".encode()
    return extra + head + body, message_id


def header_block(data: bytes) -> bytes:
    """The header section (for a DSN's text/rfc822-headers part)."""
    end = data.find(b"\r\n\r\n")
    return data[: end + 2] if end >= 0 else data
