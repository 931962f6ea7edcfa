"""The Authentication-Results header field (RFC 8601): written, and forged copies removed. Pure.

RFC 8601 §5: an MTA that writes one for its authserv-id must first delete any it received
claiming that id, or a sender could forge a "pass" in the receiver's own name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailstack.message.headers import header_end, split_fields

NAME = "Authentication-Results"
_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)", re.S)  # one level; nested comments are rare and stay
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~@]+")  # RFC 2045 token chars, plus "@" (RFC 8601 pvalue)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class MethodResult:
    """One resinfo: method=result (reason) ptype.property=value... (RFC 8601 §2.2)."""

    method: str  # spf, dkim, dmarc, arc
    result: str
    comment: str = ""
    properties: list[tuple[str, str]] = field(default_factory=list)  # ("smtp.mailfrom", "a@b.example")


def _value(text: str) -> str:
    """A pvalue: a token as is, anything else as a quoted-string (client text never breaks the field)."""
    text = _UNSAFE.sub("", text)[:256]
    if text and _TOKEN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = _UNSAFE.sub("", text)[:200].replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f" ({text})" if text else ""


def header_field(authserv_id: str, results: list[MethodResult]) -> bytes:
    """The field, folded one resinfo per line, CRLF-terminated."""
    parts = [_value(authserv_id)]
    for item in results or [MethodResult("none", "")]:
        if item.method == "none":
            parts.append("none")  # RFC 8601 §2.2: no method was applied
            continue
        props = "".join(f" {name}={_value(value)}" for name, value in item.properties if value)
        parts.append(f"{item.method}={item.result}{_comment(item.comment)}{props}")
    return (f"{NAME}: " + ";\r\n\t".join(parts) + "\r\n").encode("utf-8", "replace")


def authserv_id(value: bytes) -> bytes:
    """The authserv-id of a field's value: its first word, comments and whitespace left out."""
    text = _COMMENT.sub(b" ", value).strip()
    return re.split(rb"[\s;]", text, maxsplit=1)[0].strip(b'"') if text else b""


def without_forged(content: bytes, own_id: str) -> bytes:
    """The message without the Authentication-Results fields that claim `own_id` (case-insensitive);
    the same object when there is none (the common case costs one scan of the header)."""
    end = header_end(content, 0, len(content))
    block = memoryview(content)[:end].tobytes()
    if b"authentication-results" not in block.lower():
        return content
    wanted = own_id.lower().encode("utf-8", "replace")
    fields = split_fields(block)
    kept: list[bytes] = []
    removed = False
    for name, text in fields:
        colon = text.find(b":")
        if name.lower() == b"authentication-results" and authserv_id(text[colon + 1 :]).lower() == wanted:
            removed = True
            continue
        kept.append(text)
    if not removed:
        return content
    rest = block[sum(len(text) for _, text in fields) :]  # the blank line, if any
    return b"".join(kept) + rest + content[end:]
