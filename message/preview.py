"""A message's preview text (RFC 8970 §3 PREVIEW): the start of its first text part, as plain text.

The first text/plain part outside attachments and encapsulated messages is preferred, else the first
text/html part (tags, comments, style and script dropped, character references decoded). Transfer
encoding and charset are undone, whitespace runs become one space, and at most MAX_CHARS characters
are kept. Work is bounded: at most MAX_INPUT octets of the part are decoded.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

from mailstack.message.body_parts import is_message, is_multipart
from mailstack.message.encoded_words import decode_charset
from mailstack.message.mime import is_text, param
from mailstack.message.structure import BodyPart
from mailstack.message.transfer_encoding import UnknownCte, decode_cte

MAX_CHARS = 256  # RFC 8970 §3: no more than 256 characters
MAX_INPUT = 64 * 1024  # octets of the part decoded (HTML with long style blocks needs some room)
_HIDDEN = re.compile(r"<(style|script|head|title)\b.*?(</\1\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<!--.*?(-->|\Z)|<[^>]*>?", re.DOTALL)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")  # never in a preview (it is one line of text)


def _candidates(part: BodyPart) -> Iterator[BodyPart]:
    """The text parts a reader sees as the message's text, in order (no attachments, no
    encapsulated messages)."""
    if is_multipart(part):
        for child in part.parts:
            yield from _candidates(child)
    elif not is_message(part) and is_text(part):
        if not (part.has_disposition and part.disposition.type.lower() == b"attachment"):
            yield part


def preview_part(structure: BodyPart) -> BodyPart | None:
    """The part the preview comes from: the first text/plain one, else the first text/html one."""
    html_part = None
    for part in _candidates(structure):
        subtype = part.subtype.lower()
        if subtype == b"plain":
            return part
        if subtype == b"html" and html_part is None:
            html_part = part
    return html_part


def html_text(markup: str) -> str:
    """The text of an HTML fragment: what a browser would show, roughly."""
    return html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", markup)))


def preview(raw: bytes, structure: BodyPart) -> str | None:
    """The preview of a message whose stored bytes start with `raw` (the whole message, or only its
    first octets); None when the text part lies beyond `raw`. "" when the message has no text."""
    part = preview_part(structure)
    if part is None:
        return ""
    if part.body_offset > len(raw) or (part.body_offset == len(raw) and part.end_offset > part.body_offset):
        return None
    data = raw[part.body_offset : min(part.end_offset, part.body_offset + MAX_INPUT)]
    try:
        decoded = decode_cte(data, part.encoding)
    except UnknownCte:
        return ""
    charset = param(part.params, b"charset")
    text = decode_charset(decoded, charset.decode("latin-1") if charset else None)
    if part.subtype.lower() == b"html":
        text = html_text(text)
    return " ".join(_CONTROLS.sub(" ", text).split())[:MAX_CHARS]
