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
- Address headers are read up to MAX_ADDRESS_HEADER bytes (thousands of addresses) to bound the work.
- Addresses: name is the display name (quotes removed, encoded words kept) or else a comment; adl is
  set only for an obsolete source route (<@a,@b:user@host>).
- An address without a domain gets host "MISSING_DOMAIN" (and an empty local part "MISSING_MAILBOX"),
  as Dovecot does, because host NIL would mean "group start" in IMAP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from mailstack.message.body_parts import is_message, is_multipart
from mailstack.message.structure import Address, BodyPart, Envelope, Param

MAX_DEPTH = 32
MAX_PARTS = 2000
MAX_ADDRESS_HEADER = 64 * 1024  # bytes of an address header that ENVELOPE describes
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"

_CR, _LF, _SP, _HT = 0x0D, 0x0A, 0x20, 0x09
# A field: field-name = 1*ftext (RFC 5322 §3.6.8, 8-bit tolerated), obsolete WSP before the colon
# (§4.5), then its line and continuation lines. Regular expressions keep big headers fast.
_LINE = rb"[^\n]*(?:\n|\Z)"
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e\x80-\xff]+)[ \t]*:" + _LINE + rb"(?:[ \t]" + _LINE + rb")*")
_HEADER_LINES = re.compile(rb"(?:" + _FIELD.pattern + rb")*")
_OTHER_LINES = re.compile(_LINE + rb"(?:[ \t]" + _LINE + rb")*")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
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


# ---------------------------------------------------------------- headers


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
    out = bytearray()
    i, n = 1, len(value)
    while i < n:
        c = value[i]
        if c == 0x5C and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        if c == 0x22:
            break
        out.append(c)
        i += 1
    return bytes(out)


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


# ---------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "atom", "quoted", "literal", "comment", or the special character itself
    value: bytes
    space_before: bool


_SPECIAL_KINDS = frozenset("<>@,;:.]")
_ATOM_END = frozenset(b' \t\r\n("<>@,;:.[]')  # a stray ")" is kept in the atom


def _tokenize(value: bytes) -> list[_Token]:
    """RFC 5322 §3.2 lexical tokens of an address header, lenient about everything."""
    tokens: list[_Token] = []
    i, n = 0, len(value)
    space = False
    while i < n:
        if value[i] in b" \t\r\n":
            space, i = True, i + 1
            continue
        kind, text, i = _token_at(value, i)
        tokens.append(_Token(kind, text, space))
        space = kind == "comment"  # a comment separates like white space
    return tokens


def _token_at(value: bytes, i: int) -> tuple[str, bytes, int]:
    """(kind, text, end) of the token that starts at value[i], which is not white space."""
    c = value[i]
    if c == 0x28:
        text, end = _comment(value, i)
        return "comment", text, end
    if c == 0x22:
        text, end = _quoted(value, i)
        return "quoted", text, end
    if c == 0x5B:  # domain literal, kept with its brackets
        end = value.find(b"]", i)
        end = len(value) if end < 0 else end + 1
        return "literal", value[i:end], end
    if chr(c) in _SPECIAL_KINDS:
        return chr(c), bytes([c]), i + 1
    end = i + 1  # value[i] starts no other token, so it is part of an atom
    while end < len(value) and value[end] not in _ATOM_END:
        end += 1
    return "atom", value[i:end], end


def _comment(value: bytes, i: int) -> tuple[bytes, int]:
    """The text of the comment that opens at value[i] (nested, with quoted-pairs) and its end."""
    depth, j, n = 0, i, len(value)
    buf = bytearray()
    while j < n:
        ch = value[j]
        if ch == 0x5C and j + 1 < n:
            buf.append(value[j + 1])
            j += 2
            continue
        j += 1
        if ch == 0x28:
            depth += 1
            if depth == 1:  # the comment's own parenthesis
                continue
        elif ch == 0x29:
            depth -= 1
            if depth == 0:
                break
        buf.append(ch)
    return bytes(buf).strip(_WS), j


def _quoted(value: bytes, i: int) -> tuple[bytes, int]:
    """The content of the quoted string that opens at value[i] (quoted-pairs undone) and its end."""
    j, n = i + 1, len(value)
    buf = bytearray()
    while j < n and value[j] != 0x22:
        if value[j] == 0x5C and j + 1 < n:
            j += 1
        buf.append(value[j])
        j += 1
    return bytes(buf), j + 1


_WORD_KINDS = frozenset({"atom", "quoted", ".", "literal"})


def _phrase(words: list[_Token]) -> bytes | None:
    """Display name: words joined as written, quotes removed, encoded words kept (RFC 3501 §7.4.2)."""
    if not words:
        return None
    out = bytearray(words[0].value)
    for w in words[1:]:
        if w.space_before:
            out.append(_SP)
        out += w.value
    return bytes(out)


def _joined(words: list[_Token]) -> bytes:
    """Local part or domain: CFWS between the pieces dropped (RFC 5322 §3.4.1)."""
    return b"".join(w.value for w in words)


class _AddressParser:
    def __init__(self, value: bytes) -> None:
        self.tokens = _tokenize(value)
        self.i = 0
        self.out: list[Address] = []

    def kind(self) -> str | None:
        return self.tokens[self.i].kind if self.i < len(self.tokens) else None

    def parse(self) -> list[Address]:
        while self.i < len(self.tokens):
            if self.kind() in (",", ";"):
                self.i += 1
                continue
            start = self.i
            self.address(in_group=False)
            if self.i == start:
                self.i += 1
        return self.out

    def words(self, kinds: frozenset[str], dotted: bool = False) -> tuple[list[_Token], bytes | None]:
        """Tokens of the given kinds (comments set aside); `dotted` stops at a word that follows
        another word after white space, which ends a domain ("a@b c@d")."""
        words: list[_Token] = []
        comment = None
        while (k := self.kind()) is not None and (k in kinds or k == "comment"):
            tok = self.tokens[self.i]
            if k == "comment":
                comment = tok.value or comment
            elif dotted and words and words[-1].kind != "." and k != "." and tok.space_before:
                break
            else:
                words.append(tok)
            self.i += 1
        return words, comment

    def skip_to_end_of_address(self, in_group: bool) -> bytes | None:
        """Skip what cannot be part of this address; return a trailing comment if any."""
        comment = None
        stops = (",", ";") if in_group else (",",)
        while (k := self.kind()) is not None and k not in stops:
            if k == "comment":
                comment = self.tokens[self.i].value or comment
            self.i += 1
        return comment

    def add(self, name: bytes | None, adl: bytes | None, local: bytes, domain: bytes) -> None:
        if name is None and not local and not domain:
            return
        addr = Address(mailbox=local or MISSING_MAILBOX, host=domain or MISSING_DOMAIN)
        if name is not None:
            addr.name = name
        if adl:
            addr.adl = adl
        self.out.append(addr)

    def address(self, in_group: bool) -> None:
        words, comment = self.words(_WORD_KINDS)
        k = self.kind()
        if k == ":" and not in_group:
            self.group(words)
        elif k == "<":
            self.angle_address(words, comment, in_group)
        elif k == "@":
            self.i += 1
            domain, after = self.words(_WORD_KINDS, dotted=True)
            trailing = self.skip_to_end_of_address(in_group)
            self.add(after or trailing or comment, None, _joined(words), _joined(domain))
        else:
            trailing = self.skip_to_end_of_address(in_group)
            if words:
                self.add(comment or trailing, None, _joined(words), b"")

    def group(self, words: list[_Token]) -> None:
        """A group (RFC 5322 §3.4): in IMAP, a start marker, its addresses, an end marker."""
        self.i += 1
        self.out.append(Address(mailbox=_phrase(words) or b""))
        while (k := self.kind()) is not None and k != ";":
            if k == ",":
                self.i += 1
                continue
            start = self.i
            self.address(in_group=True)
            if self.i == start:
                self.i += 1
        if k == ";":
            self.i += 1
        self.out.append(Address())

    def angle_address(self, words: list[_Token], comment: bytes | None, in_group: bool) -> None:
        """[display-name] "<" [route] addr-spec ">" (RFC 5322 §3.4, §4.4)."""
        self.i += 1
        adl = self.route()
        local, _ = self.words(_WORD_KINDS)
        domain: list[_Token] = []
        if self.kind() == "@":
            self.i += 1
            domain, _ = self.words(_WORD_KINDS)
        while (k := self.kind()) is not None and k not in (">", ",", ";"):
            self.i += 1
        if self.kind() == ">":
            self.i += 1
        trailing = self.skip_to_end_of_address(in_group)
        name = _phrase(words)
        self.add(name if name is not None else (comment or trailing), adl, _joined(local), _joined(domain))

    def route(self) -> bytes | None:
        """An obsolete source route "@a,@b:" (RFC 5322 §4.4), if there is one."""
        if self.kind() != "@":
            return None
        route, _ = self.words(_WORD_KINDS | {"@", ","})
        if self.kind() != ":":
            return None
        self.i += 1
        return _joined(route)


def parse_addresses(value: bytes | None) -> list[Address]:
    """An address-list header value as IMAP address structures; never raises."""
    if not value:
        return []
    if len(value) > MAX_ADDRESS_HEADER:  # bound the work; cut between two addresses if possible
        value = value[: value.rfind(b",", 0, MAX_ADDRESS_HEADER) + 1 or MAX_ADDRESS_HEADER]
    parser = _AddressParser(value)
    try:
        return parser.parse()
    except Exception:  # defensive: keep what was parsed before the surprise
        return parser.out


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
