"""Lexical grammar of IMAP commands (RFC 3501 §9, RFC 9051 §9): a cursor over one complete,
already framed command (lines joined with their CRLFs, literal octets in place)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TypeVar

from mailstack.message.flags import canonical_flag

T = TypeVar("T")


class GrammarError(Exception):
    """The command does not match the grammar; the message becomes the BAD response text."""


# CTL = %x00-1F / %x7F
CTL = frozenset(range(0x00, 0x20)) | {0x7F}
# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
# list-wildcards = "%" / "*";  quoted-specials = DQUOTE / "\";  resp-specials = "]"
ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | CTL
# ATOM-CHAR = <any CHAR except atom-specials>;  CHAR = %x01-7F
ATOM_CHARS = frozenset(range(0x01, 0x80)) - ATOM_SPECIALS
# ASTRING-CHAR = ATOM-CHAR / resp-specials
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
# tag = 1*<any ASTRING-CHAR except "+">
TAG_CHARS = ASTRING_CHARS - {ord("+")}
# list-char = ATOM-CHAR / list-wildcards / resp-specials
LIST_CHARS = ASTRING_CHARS | {ord("%"), ord("*")}
DIGITS = frozenset(b"0123456789")

MAX_NUMBER = 0xFFFFFFFF  # number = 1*DIGIT ; unsigned 32-bit
MAX_NUMBER64 = 0x7FFFFFFFFFFFFFFF  # mod-sequence-value = 1*DIGIT ; 63-bit (RFC 7162 §7)

# system flags with their canonical spelling (RFC 3501 §2.3.2)

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {m.lower().encode(): i + 1 for i, m in enumerate(MONTHS)}


class Reader:
    """Cursor over one command. Every method either consumes what it parsed or raises
    GrammarError; nothing else escapes (the receiver relies on that)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    # -- primitives

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def peek_is(self, token: bytes) -> bool:
        return self.data.startswith(token, self.pos)

    def peek_keyword(self, word: bytes) -> bool:
        """True when the next atom equals `word` case-insensitively (not a prefix of a longer atom)."""
        end = self.pos + len(word)
        if self.data[self.pos : end].upper() != word.upper():
            return False
        return end >= len(self.data) or self.data[end] not in ATOM_CHARS

    def accept(self, token: bytes) -> bool:
        if self.data.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: bytes, what: str | None = None) -> None:
        if not self.accept(token):
            raise GrammarError(f"expected {what or token.decode('ascii')}")

    def sp(self) -> None:
        self.expect(b" ", "SP")

    def end(self) -> None:
        if not self.at_end():
            raise GrammarError("unexpected characters at end of command")

    def take_while(self, chars: frozenset[int]) -> bytes:
        start = self.pos
        data = self.data
        while self.pos < len(data) and data[self.pos] in chars:
            self.pos += 1
        return data[start : self.pos]

    def sequence(self, item: Callable[[], T]) -> tuple[T, ...]:
        """ "(" [item *(SP item)] ")" """
        self.expect(b"(")
        items: list[T] = []
        if not self.accept(b")"):
            items.append(item())
            while not self.accept(b")"):
                self.sp()
                items.append(item())
        return tuple(items)

    # -- atoms and numbers

    def atom(self) -> bytes:
        # atom = 1*ATOM-CHAR
        value = self.take_while(ATOM_CHARS)
        if not value:
            raise GrammarError("expected atom")
        return value

    def keyword(self) -> str:
        """An atom used as a keyword (command name, search key, option): upper-cased."""
        return self.atom().decode("ascii").upper()

    def tag(self) -> str:
        value = self.take_while(TAG_CHARS)
        # the tag ends at SP: of "a+b NOOP" no tag can be told, so the BAD goes untagged (RFC 9051 §7.1.5)
        if not value or not (self.at_end() or self.peek_is(b" ")):
            raise GrammarError("invalid tag")
        return value.decode("ascii")

    def digits(self) -> bytes:
        value = self.take_while(DIGITS)
        if not value:
            raise GrammarError("expected number")
        if len(value) > 20:  # also keeps int() far from its digit limit
            raise GrammarError("number out of range")
        return value

    def number(self, maximum: int = MAX_NUMBER) -> int:
        value = int(self.digits())
        if value > maximum:
            raise GrammarError("number out of range")
        return value

    def nz_number(self) -> int:
        # nz-number = digit-nz *DIGIT
        value = self.number()
        if value == 0:
            raise GrammarError("expected non-zero number")
        return value

    def number64(self) -> int:
        return self.number(MAX_NUMBER64)

    # -- strings

    def quoted(self) -> bytes:
        # quoted = DQUOTE *QUOTED-CHAR DQUOTE
        # QUOTED-CHAR = <any TEXT-CHAR except quoted-specials> / "\" quoted-specials / UTF8-2 / UTF8-3 / UTF8-4
        # 8-bit octets are accepted leniently (RFC 9051 allows UTF-8 here).
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise GrammarError("unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos < len(data) and data[self.pos] in (0x22, 0x5C):
                    out.append(data[self.pos])
                    self.pos += 1
                    continue
                raise GrammarError("invalid escape in quoted string")
            if c in (0x00, 0x0A, 0x0D):
                raise GrammarError("invalid character in quoted string")
            out.append(c)

    def literal(self, allow_literal8: bool = False) -> bytes:
        # literal = "{" number64 ["+"] "}" CRLF *CHAR8   (RFC 9051; "+" is LITERAL+, RFC 7888)
        # literal8 = "~{" number64 "}" CRLF *OCTET        (RFC 3516 BINARY)
        if self.accept(b"~") and not allow_literal8:
            raise GrammarError("literal8 not allowed here")
        self.expect(b"{")
        size = self.number64()
        self.accept(b"+")
        self.expect(b"}")
        self.expect(b"\r\n", "CRLF after literal header")
        if self.pos + size > len(self.data):
            raise GrammarError("truncated literal")
        value = self.data[self.pos : self.pos + size]
        # a string literal is CHAR8 (%x01-ff): no NUL (APPEND's message is left to its handler)
        if not allow_literal8 and b"\x00" in value:
            raise GrammarError("NUL octet in a literal")
        self.pos += size
        return value

    def string(self) -> bytes:
        # string = quoted / literal
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise GrammarError("expected string")

    def astring(self) -> bytes:
        # astring = 1*ASTRING-CHAR / string
        c = self.peek()
        if c == 0x22 or c == 0x7B:
            return self.string()
        value = self.take_while(ASTRING_CHARS)
        if not value:
            raise GrammarError("expected astring")
        return value

    def nstring(self) -> bytes | None:
        # nstring = string / nil
        if self.peek_keyword(b"NIL"):
            self.pos += 3
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        # list-mailbox = 1*list-char / string
        c = self.peek()
        if c == 0x22 or c == 0x7B:
            return self.string()
        value = self.take_while(LIST_CHARS)
        if not value:
            raise GrammarError("expected mailbox pattern")
        return value

    def text_astring(self) -> str:
        """An astring that must be UTF-8 text (user names, passwords, charset names)."""
        try:
            return self.astring().decode("utf-8")
        except UnicodeDecodeError:
            raise GrammarError("invalid UTF-8") from None

    # -- flags

    def flag(self, allow_wildcard: bool = False) -> str:
        # flag = "\Answered" / "\Flagged" / "\Deleted" / "\Seen" / "\Draft" / flag-keyword / flag-extension
        # flag-extension = "\" atom;  flag-keyword = atom;  flag-perm = flag / "\*"
        if self.accept(b"\\"):
            if allow_wildcard and self.accept(b"*"):
                return "\\*"
            name = "\\" + self.atom().decode("ascii")
            return canonical_flag(name)
        return self.atom().decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        # flag-list = "(" [flag *(SP flag)] ")"
        return self.sequence(self.flag)

    # -- dates

    def _date_text(self, fixed_day: bool) -> datetime.date:
        # date-text = date-day "-" date-month "-" date-year
        # date-day = 1*2DIGIT;  date-day-fixed = (SP DIGIT) / 2DIGIT
        if fixed_day:
            self.accept(b" ")
        day = self.take_while(DIGITS)
        if not 1 <= len(day) <= 2:
            raise GrammarError("invalid date")
        self.expect(b"-", "date")
        month = _MONTH_NUMBER.get(self.data[self.pos : self.pos + 3].lower())
        if month is None:
            raise GrammarError("invalid month")
        self.pos += 3
        self.expect(b"-", "date")
        year = self.take_while(DIGITS)
        if len(year) != 4:
            raise GrammarError("invalid year")
        try:
            return datetime.date(int(year), month, int(day))
        except ValueError:
            raise GrammarError("invalid date") from None

    def date(self) -> datetime.date:
        # date = date-text / DQUOTE date-text DQUOTE
        if self.accept(b'"'):
            value = self._date_text(fixed_day=False)
            self.expect(b'"')
            return value
        return self._date_text(fixed_day=False)

    def date_time(self) -> datetime.datetime:
        # date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
        # time = 2DIGIT ":" 2DIGIT ":" 2DIGIT;  zone = ("+" / "-") 4DIGIT
        self.expect(b'"')
        day = self._date_text(fixed_day=True)
        self.sp()
        hms: list[int] = []
        for i in range(3):
            if i:
                self.expect(b":", "time")
            two = self.take_while(DIGITS)
            if len(two) != 2:
                raise GrammarError("invalid time")
            hms.append(int(two))
        self.sp()
        sign = self.peek()
        if sign not in (0x2B, 0x2D):
            raise GrammarError("invalid zone")
        self.pos += 1
        zone = self.take_while(DIGITS)
        if len(zone) != 4 or int(zone[:2]) > 23 or int(zone[2:]) > 59:
            raise GrammarError("invalid zone")
        self.expect(b'"')
        offset = datetime.timedelta(hours=int(zone[:2]), minutes=int(zone[2:]))
        if sign == 0x2D:
            offset = -offset
        try:
            return datetime.datetime(
                day.year, day.month, day.day, hms[0], hms[1], hms[2], tzinfo=datetime.timezone(offset)
            )
        except ValueError:
            raise GrammarError("invalid time") from None
