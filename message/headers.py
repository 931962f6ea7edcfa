"""Header blocks (RFC 5322 §2.2, §3.6): where a header ends, its fields with their exact bytes, and
unfolded values. Lenient: 8-bit field names, WSP before the colon (§4.5); a line that is not a
field is kept under the name b"". Pure.
"""

from __future__ import annotations

import re

_CR, _LF = 0x0D, 0x0A
# A field: field-name = 1*ftext (RFC 5322 §3.6.8, 8-bit tolerated), obsolete WSP before the colon
# (§4.5), then its line and continuation lines. Regular expressions keep big headers fast.
_LINE = rb"[^\n]*(?:\n|\Z)"
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e\x80-\xff]+)[ \t]*:" + _LINE + rb"(?:[ \t]" + _LINE + rb")*")
_HEADER_LINES = re.compile(rb"(?:" + _FIELD.pattern + rb")*")
_OTHER_LINES = re.compile(_LINE + rb"(?:[ \t]" + _LINE + rb")*")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_WS = b" \t\r\n"


def header_end(raw: bytes, start: int, end: int) -> int:
    """Offset where the body of the entity in raw[start:end] begins (RFC 5322 §2.1)."""
    m = _HEADER_LINES.match(raw, start, end)
    pos = m.end() if m else start
    if pos < end and raw[pos] == _LF:
        return pos + 1  # the blank line belongs to the header
    if pos + 1 < end and raw[pos] == _CR and raw[pos + 1] == _LF:
        return pos + 2
    return pos


def split_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(name, field text with its continuation lines and line endings) for each field of a header block.

    Stops at the blank line. Lines that are not a field (only possible at the start) have name b"".
    """
    fields: list[tuple[bytes, bytes]] = []
    pos, n = 0, len(block)
    while pos < n and block[pos] != _LF and not block.startswith(b"\r\n", pos):
        m = _FIELD.match(block, pos)
        if m is not None:
            fields.append((m.group(1), m.group(0)))
        else:
            m = _OTHER_LINES.match(block, pos)
            assert m is not None  # matches at least the rest of the line
            fields.append((b"", m.group(0)))
        pos = m.end()
    return fields


def field_value(field: bytes) -> bytes:
    """The unfolded value of a field's text (RFC 5322 §2.2.3), surrounding whitespace removed."""
    colon = field.find(b":")
    return _FOLD.sub(b"", field[colon + 1 :]).strip(_WS)


def header_values(block: bytes) -> dict[bytes, bytes]:
    """Lower-cased field name -> unfolded value of its first occurrence."""
    values: dict[bytes, bytes] = {}
    for name, text in split_fields(block):
        if name and (key := name.lower()) not in values:
            values[key] = field_value(text)
    return values


def quoted_string(value: bytes, start: int) -> tuple[bytes, int]:
    """The content of the quoted-string that opens at value[start] (RFC 5322 §3.2.4: quoted-pairs
    undone; unterminated runs to the end) and the offset after its closing quote."""
    out = bytearray()
    i, n = start + 1, len(value)
    while i < n and value[i] != 0x22:
        if value[i] == 0x5C and i + 1 < n:
            i += 1
        out.append(value[i])
        i += 1
    return bytes(out), i + 1


def header_value(block: bytes, name: bytes) -> bytes | None:
    """The unfolded value of the first field called `name` (lower-case), None if absent. Looks only
    for that field, so it is cheap on every message of a mailbox (IMAP THREAD's References)."""
    pattern = _NAMED_FIELDS.get(name)
    if pattern is None:
        pattern = re.compile(rb"(?:^|\n)(" + re.escape(name) + rb")[ \t]*:", re.IGNORECASE)
        if len(_NAMED_FIELDS) < 64:
            _NAMED_FIELDS[name] = pattern
    end = header_end(block, 0, len(block))
    m = pattern.search(block, 0, end)
    if m is None:
        return None
    field = _FIELD.match(block, m.start(1))
    return field_value(field.group(0)) if field is not None else None


_NAMED_FIELDS: dict[bytes, re.Pattern[bytes]] = {}
