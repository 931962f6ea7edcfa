"""Address headers as IMAP address structures (RFC 5322 §3.4, RFC 3501 §7.4.2 ENVELOPE). Pure;
`parse_addresses` never raises.

Decisions:
- Address headers are read up to MAX_ADDRESS_HEADER bytes (thousands of addresses) to bound the work.
- Addresses: name is the display name (quotes removed, encoded words kept) or else a comment; adl is
  set only for an obsolete source route (<@a,@b:user@host>).
- An address without a domain gets host "MISSING_DOMAIN" (and an empty local part "MISSING_MAILBOX"),
  as Dovecot does, because host NIL would mean "group start" in IMAP.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailstack.message.headers import quoted_string
from mailstack.message.structure import Address

MAX_ADDRESS_HEADER = 64 * 1024  # bytes of an address header that ENVELOPE describes
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"
_SP = 0x20
_WS = b" \t\r\n"


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
        text, end = quoted_string(value, i)
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
