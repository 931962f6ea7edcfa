"""What IMAP needs precomputed at delivery: ENVELOPE, BODYSTRUCTURE and the byte offsets of every part.

Pure functions over the raw message bytes, no I/O. `parse_message` never raises: whatever it cannot
understand becomes a text/plain part, so a message is always stored and always fetchable.

Decisions (so that every reader of the stored structure knows them):
- Offsets are computed on the raw bytes by our own walker, never by re-serialising a parsed message:
  raw[body_offset:end_offset] is exactly what IMAP BODY[n] returns and raw[header_offset:body_offset]
  is BODY[n.MIME] (or the message header), including the blank line when there is one.
- Case is kept as written in the message (as the proto says, and as Dovecot answers): type, subtype,
  parameter names and values, encoding. Defaults are "text" "plain" ("charset" "us-ascii") "7BIT";
  a text part without a charset parameter gets ("charset" "us-ascii") (RFC 2045 §5.2).
  Compare with `is_multipart`, `is_message` and `param`, which ignore case.
- The header ends at the first empty line, or before the first line that is neither a header field
  nor a continuation (then there is no separator: garbage becomes a header-less text/plain body).
- Nesting is cut at MAX_DEPTH and MAX_PARTS: deeper multiparts/messages are described as
  application/octet-stream leaves (the protobuf parser refuses more than 100 nested messages).
- A multipart without any body part gets one empty text/plain part at its end, because IMAP's
  body-type-mpart needs at least one (Dovecot does the same).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from mailstack.message.addresses import parse_addresses
from mailstack.message.body_parts import is_message, is_multipart
from mailstack.message.headers import header_end, header_values, quoted_string
from mailstack.message.structure import BodyPart, Envelope, Param

MAX_DEPTH = 32
MAX_PARTS = 2000

_CR, _LF, _SP, _HT = 0x0D, 0x0A, 0x20, 0x09
_WS = b" \t\r\n"
_RFC2231_NAME = re.compile(rb"^(?P<base>[^*]+)\*(?P<index>\d{1,6})(?P<ext>\*)?$")
_ATTRIBUTE_CHAR = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&+-.^_`|~")


@dataclass(frozen=True)
class ParsedMessage:
    envelope: Envelope
    structure: BodyPart
    header: bytes  # the top-level header block, including the blank line
    sent_date: int | None  # unix seconds of the Date: header
    size: int


# ---------------------------------------------------------------- MIME header values


def _strip_comments(value: bytes) -> bytes:
    """Remove (comments) outside quoted strings (RFC 2045 §5.1 allows them in Content-Type)."""
    if b"(" not in value:
        return value
    out = bytearray()
    depth = 0
    quoted = False
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == 0x5C and i + 1 < n and (quoted or depth):  # backslash escape
            if not depth:
                out += value[i : i + 2]
            i += 2
            continue
        if depth:
            depth += (c == 0x28) - (c == 0x29)
        elif c == 0x22:
            quoted = not quoted
            out.append(c)
        elif c == 0x28 and not quoted:
            depth = 1
            out.append(_SP)
        else:
            out.append(c)
        i += 1
    return bytes(out)


def _split_unquoted(value: bytes, sep: int) -> list[bytes]:
    parts: list[bytes] = []
    quoted = False
    begin = i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == 0x5C and quoted:
            i += 2
            continue
        if c == 0x22:
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append(value[begin:i])
            begin = i + 1
        i += 1
    parts.append(value[begin:])
    return parts


def _unquote(value: bytes) -> bytes:
    if not value.startswith(b'"'):
        return value
    return quoted_string(value, 0)[0]


def _percent_encode(value: bytes) -> bytes:
    return b"".join(bytes([c]) if c in _ATTRIBUTE_CHAR else b"%%%02X" % c for c in value)


def _merge_continuations(params: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Join RFC 2231 §3 continuations (name*0, name*1*, ...) into one parameter.

    Like Dovecot: a merged value with an extended segment is returned as name* with the
    charset'language'%XX form, since IMAP clients decode that themselves (RFC 2231 §4).
    """
    groups: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    out: list[tuple[bytes, bytes] | bytes] = []
    for name, value in params:
        m = _RFC2231_NAME.match(name)
        if m is None:
            out.append((name, value))
            continue
        base = m.group("base")
        if base.lower() not in groups:
            groups[base.lower()] = []
            out.append(base)
        groups[base.lower()].append((int(m.group("index")), m.group("ext") is not None, value))
    merged: list[tuple[bytes, bytes]] = []
    for item in out:
        if isinstance(item, tuple):
            merged.append(item)
            continue
        segments = sorted(groups[item.lower()], key=lambda s: s[0])
        extended = any(ext for _, ext, _ in segments)
        if extended:
            value = b"".join(v if ext else _percent_encode(v) for _, ext, v in segments)
            if not segments[0][1]:  # the charset'language' prefix comes with the first segment
                value = b"''" + value
            merged.append((item + b"*", value))
        else:
            merged.append((item, b"".join(v for _, _, v in segments)))
    return merged


def parse_mime_value(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """'type/subtype; name="value"' -> (b'type/subtype', [(name, value)]) (RFC 2045 §5.1, RFC 2231)."""
    pieces = _split_unquoted(_strip_comments(value), 0x3B)
    main = pieces[0].strip(_WS)
    params: list[tuple[bytes, bytes]] = []
    for piece in pieces[1:]:
        name, eq, val = piece.partition(b"=")
        name = name.strip(_WS)
        if not eq or not name:
            continue
        params.append((name, _unquote(val.strip(_WS))))
    return main, _merge_continuations(params)


def param(params: Iterable[tuple[bytes, bytes] | Param], name: bytes) -> bytes | None:
    """Value of a parameter by case-insensitive name, from (name, value) pairs or Param."""
    wanted = name.lower()
    for p in params:
        pname, pvalue = (p.name, p.value) if isinstance(p, Param) else p
        if pname.lower() == wanted:
            return bytes(pvalue)
    return None


def is_text(part: BodyPart) -> bool:
    return part.type.lower() == b"text"


# ---------------------------------------------------------------- envelope


def build_envelope(values: dict[bytes, bytes]) -> Envelope:
    """ENVELOPE from the first occurrence of each header field (RFC 3501 §7.4.2)."""
    env = Envelope()
    for field, attr in ((b"date", "date"), (b"subject", "subject"), (b"in-reply-to", "in_reply_to")):
        if field in values:
            setattr(env, attr, values[field])
    if b"message-id" in values:
        env.message_id = values[b"message-id"]
    sender_from = parse_addresses(values.get(b"from"))
    getattr(env, "from").extend(sender_from)
    # Sender and Reply-To default to From when absent or empty (RFC 3501 §7.4.2).
    env.sender.extend(parse_addresses(values.get(b"sender")) or sender_from)
    env.reply_to.extend(parse_addresses(values.get(b"reply-to")) or sender_from)
    env.to.extend(parse_addresses(values.get(b"to")))
    env.cc.extend(parse_addresses(values.get(b"cc")))
    env.bcc.extend(parse_addresses(values.get(b"bcc")))
    return env


def parse_date(value: bytes | None) -> int | None:
    """Unix seconds of a Date: value (RFC 5322 §3.3), None when it does not parse."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
        if when.tzinfo is None:  # "-0000": time in UTC, zone unknown (RFC 5322 §3.3)
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp())
    except Exception:  # the email package raises several kinds on odd dates
        return None


# ---------------------------------------------------------------- body structure


def _count_lines(raw: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    return raw.count(b"\n", start, end) + (raw[end - 1] != _LF)


def _language(value: bytes) -> list[bytes]:
    cleaned = _strip_comments(value).replace(b",", b" ")
    return [tag for tag in cleaned.split() if tag]


class _Walker:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.parts = 0

    def entity(self, start: int, end: int, depth: int, default: tuple[bytes, bytes]) -> BodyPart:
        """BODYSTRUCTURE of the entity (MIME header + body) in raw[start:end]."""
        raw = self.raw
        self.parts += 1
        body = header_end(raw, start, end)
        values = header_values(raw[start:body])
        part = BodyPart(header_offset=start, body_offset=body, end_offset=end, size=end - body)
        self.describe(part, values, default)
        leaf = depth >= MAX_DEPTH or self.parts >= MAX_PARTS
        if (is_multipart(part) or is_message(part)) and leaf:
            part.type, part.subtype = b"application", b"octet-stream"
            del part.params[:]
        if is_multipart(part):
            self.multipart(part, depth)
        elif is_message(part):
            # Always described as a message, as IMAP's body-type-msg needs; an (illegally) encoded
            # message/rfc822 simply yields a header-less inner text part (RFC 2046 §5.2.1).
            inner = self.entity(body, end, depth + 1, (b"text", b"plain"))
            part.envelope.CopyFrom(build_envelope(header_values(raw[body : inner.body_offset])))
            part.parts.append(inner)
            part.lines = _count_lines(raw, body, end)
        elif is_text(part):
            part.lines = _count_lines(raw, body, end)
        return part

    def describe(self, part: BodyPart, values: dict[bytes, bytes], default: tuple[bytes, bytes]) -> None:
        ctype, params = parse_mime_value(values.get(b"content-type", b""))
        kind, slash, sub = ctype.partition(b"/")
        kind, sub = kind.strip(_WS), sub.strip(_WS)
        if not slash or len(kind.split()) != 1 or len(sub.split()) != 1:
            # Absent or invalid Content-Type: the default (RFC 2045 §5.2, RFC 2046 §5.1.5 for digests).
            kind, sub, params = default[0], default[1], []
        part.type, part.subtype = kind, sub
        if kind.lower() == b"text" and param(params, b"charset") is None:
            params.append((b"charset", b"us-ascii"))
        part.params.extend(Param(name=n, value=v) for n, v in params)
        part.encoding = values.get(b"content-transfer-encoding") or b"7BIT"
        for field, attr in (
            (b"content-id", "id"),
            (b"content-description", "description"),
            (b"content-md5", "md5"),
            (b"content-location", "location"),
        ):
            if field in values:
                setattr(part, attr, values[field])
        if values.get(b"content-disposition"):
            dtype, dparams = parse_mime_value(values[b"content-disposition"])
            if dtype:
                part.has_disposition = True
                part.disposition.type = dtype
                part.disposition.params.extend(Param(name=n, value=v) for n, v in dparams)
        if b"content-language" in values:
            part.language.extend(_language(values[b"content-language"]))

    def multipart(self, part: BodyPart, depth: int) -> None:
        """Split a multipart body at its delimiters (RFC 2046 §5.1.1): the line break before a
        delimiter belongs to the delimiter; preamble and epilogue belong to no part."""
        raw, start, end = self.raw, part.body_offset, part.end_offset
        boundary = param(part.params, b"boundary")
        child_default = (b"message", b"rfc822") if part.subtype.lower() == b"digest" else (b"text", b"plain")
        child_start: int | None = None
        for line_start, line_end, close in self.delimiters(boundary, start, end) if boundary else ():
            if child_start is not None:
                child_end = line_start - 1
                if child_end - 1 >= child_start and raw[child_end - 1] == _CR:
                    child_end -= 1
                part.parts.append(self.entity(child_start, max(child_start, child_end), depth + 1, child_default))
            child_start = None if close else line_end
            if close or self.parts >= MAX_PARTS:
                break
        if child_start is not None:  # no close delimiter: the last part runs to the end
            part.parts.append(self.entity(child_start, end, depth + 1, child_default))
        if not part.parts:
            empty = BodyPart(type=b"text", subtype=b"plain", encoding=b"7BIT")
            empty.params.append(Param(name=b"charset", value=b"us-ascii"))
            empty.header_offset = empty.body_offset = empty.end_offset = end
            part.parts.append(empty)

    def delimiters(self, boundary: bytes, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """(line start, line end incl. line break, is close-delimiter) of each delimiter line."""
        raw = self.raw
        dash = b"--" + boundary
        pos = start
        while (i := raw.find(dash, pos, end)) >= 0:
            pos = i + 1
            if i != start and raw[i - 1] != _LF:
                continue
            j = i + len(dash)
            close = raw.startswith(b"--", j) and j + 2 <= end
            if close:
                j += 2
            while j < end and raw[j] in (_SP, _HT):  # transport padding
                j += 1
            if j < end and raw[j] == _CR and j + 1 < end and raw[j + 1] == _LF:
                j += 2
            elif j < end and raw[j] == _LF:
                j += 1
            elif j < end:
                continue  # "--boundary" followed by other text is not a delimiter
            yield i, j, close
            if close:
                return
            pos = j


def crlf_only(raw: bytes) -> bool:
    """Every CR is followed by LF and every LF follows a CR: POP3 and IMAP can send it as it is."""
    pairs = raw.count(b"\r\n")
    return raw.count(b"\n") == pairs and raw.count(b"\r") == pairs


def _fallback(raw: bytes) -> ParsedMessage:
    part = BodyPart(type=b"text", subtype=b"plain", encoding=b"7BIT", size=len(raw), end_offset=len(raw))
    part.params.append(Param(name=b"charset", value=b"us-ascii"))
    part.lines = _count_lines(raw, 0, len(raw))
    part.crlf = crlf_only(raw)
    return ParsedMessage(Envelope(), part, b"", None, len(raw))


def parse_message(raw: bytes) -> ParsedMessage:
    """ENVELOPE, BODYSTRUCTURE with offsets, header block and Date of a raw message; never raises."""
    raw = bytes(raw)
    try:
        structure = _Walker(raw).entity(0, len(raw), 0, (b"text", b"plain"))
        structure.crlf = crlf_only(raw)  # found once here instead of at every POP3 RETR
        header = raw[: structure.body_offset]
        values = header_values(header)
        return ParsedMessage(build_envelope(values), structure, header, parse_date(values.get(b"date")), len(raw))
    except Exception:  # a bug must not lose mail: describe the message as one text part
        return _fallback(raw)
