"""FETCH data items (RFC 3501 §6.4.5, RFC 9051 §6.4.5, BINARY from RFC 3516, MODSEQ and
CHANGEDSINCE from RFC 7162 §3.1.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from .grammar import ASTRING_CHARS, DIGITS, GrammarError, Reader

# fetch-att = "ENVELOPE" / "FLAGS" / "INTERNALDATE" / "RFC822" [".HEADER" / ".SIZE" / ".TEXT"] /
#             "BODY" ["STRUCTURE"] / "UID" / "MODSEQ" / ...
SIMPLE_ATTRIBUTES = frozenset(
    {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT"}
    | {"BODY", "BODYSTRUCTURE", "UID", "MODSEQ"}
    | {"SAVEDATE"}  # RFC 8514 §3
    | {"EMAILID", "THREADID"}  # RFC 8474 §5
)
# "ALL" / "FULL" / "FAST" macros (RFC 3501 §6.4.5)
MACROS = {
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")
_FIELD_CHARS = frozenset(range(33, 127)) - {0x3A}


@dataclass(frozen=True, slots=True)
class FetchAttribute:
    """A data item without section: FLAGS, UID, ENVELOPE, RFC822.SIZE, BODY, BODYSTRUCTURE, MODSEQ..."""

    name: str


@dataclass(frozen=True, slots=True)
class Section:
    """section-spec: part numbers and optional HEADER / HEADER.FIELDS[.NOT] / TEXT / MIME."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = field(default=())

    def __bytes__(self) -> bytes:
        pieces = [".".join(str(n) for n in self.part)] if self.part else []
        if self.text:
            text = self.text
            if self.fields:
                text += " (" + " ".join(_field_atom(f) for f in self.fields) + ")"
            pieces.append(text)
        return ".".join(pieces).encode("ascii")


def _field_atom(name: str) -> str:
    if all(ord(c) in ASTRING_CHARS for c in name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class FetchBody:
    """BODY[section]<partial>, BODY.PEEK[...], BINARY[part]<partial>, BINARY.PEEK[...]."""

    section: Section
    partial: tuple[int, int] | None = None  # (origin, octet count)
    peek: bool = False
    binary: bool = False

    def label(self) -> bytes:
        """The item name used in the FETCH response: `BODY[1.TEXT]<0>` (RFC 3501 §7.4.2)."""
        name = b"BINARY[" if self.binary else b"BODY["
        origin = b"<%d>" % self.partial[0] if self.partial else b""
        return name + bytes(self.section) + b"]" + origin


@dataclass(frozen=True, slots=True)
class FetchBinarySize:
    """BINARY.SIZE[part] (RFC 3516 §4.2)."""

    part: tuple[int, ...]

    def label(self) -> bytes:
        return b"BINARY.SIZE[" + ".".join(str(n) for n in self.part).encode() + b"]"


@dataclass(frozen=True, slots=True)
class FetchPreview:
    """PREVIEW [(LAZY)] (RFC 8970 §3): LAZY lets the server answer NIL when it is not cheap."""

    lazy: bool = False

    def label(self) -> bytes:
        return b"PREVIEW"


FetchItem: TypeAlias = FetchAttribute | FetchBody | FetchBinarySize | FetchPreview
PREVIEW_MODIFIERS = frozenset({"LAZY"})  # preview-mod (RFC 8970 §5)


def _preview(reader: Reader) -> FetchPreview:
    # fetch-att =/ "PREVIEW" [SP "(" preview-mod *(SP preview-mod) ")"]   (RFC 8970 §5)
    if not (reader.peek_is(b" ") and reader.data[reader.pos + 1 : reader.pos + 2] == b"("):
        return FetchPreview()
    reader.sp()
    modifiers = reader.sequence(reader.keyword)
    if not modifiers or not set(modifiers) <= PREVIEW_MODIFIERS:
        raise GrammarError("PREVIEW takes the modifier LAZY")
    return FetchPreview(lazy=True)


def _section_part(reader: Reader) -> tuple[int, ...]:
    # section-part = nz-number *("." nz-number)
    part = [reader.nz_number()]
    while reader.peek_is(b".") and reader.data[reader.pos + 1 : reader.pos + 2].isdigit():
        reader.pos += 1
        part.append(reader.nz_number())
    return tuple(part)


def _header_field(reader: Reader) -> str:
    raw = reader.astring()
    if not raw or not set(raw) <= _FIELD_CHARS:
        raise GrammarError("invalid header field name")
    return raw.decode("ascii")


def _section(reader: Reader) -> Section:
    # section = "[" [section-spec] "]"
    # section-spec = section-msgtext / (section-part ["." section-text])
    # section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT"
    # section-text = section-msgtext / "MIME";  header-list = "(" header-fld-name *(SP header-fld-name) ")"
    reader.expect(b"[")
    if reader.accept(b"]"):
        return Section()
    part: tuple[int, ...] = ()
    if reader.peek() in DIGITS:
        part = _section_part(reader)
        if reader.accept(b"]"):
            return Section(part)
        reader.expect(b".")
    text = reader.take_while(_NAME_CHARS).decode("ascii").upper()
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        reader.sp()
        fields = reader.sequence(lambda: _header_field(reader))
        if not fields:
            raise GrammarError("empty header list")
    elif text not in ("HEADER", "TEXT", "MIME") or (text == "MIME" and not part):
        raise GrammarError("invalid section")
    reader.expect(b"]")
    return Section(part, text, fields)


def parse_section(spec: bytes) -> Section:
    """A section-spec on its own (an IMAP URL's ;SECTION=, RFC 5092 §11 enc-section); GrammarError."""
    reader = Reader(b"[" + spec + b"]")
    section = _section(reader)
    reader.end()
    return section


def _binary_section(reader: Reader) -> tuple[int, ...]:
    # section-binary = "[" [section-part] "]"
    reader.expect(b"[")
    part = () if reader.peek() == 0x5D else _section_part(reader)
    reader.expect(b"]")
    return part


def _partial(reader: Reader) -> tuple[int, int] | None:
    # partial = "<" number64 "." nz-number64 ">"
    if not reader.accept(b"<"):
        return None
    origin = reader.number64()
    reader.expect(b".")
    count = reader.number64()
    if count == 0:
        raise GrammarError("partial length must be non-zero")
    reader.expect(b">")
    return (origin, count)


def parse_fetch_item(reader: Reader) -> FetchItem:
    name = reader.take_while(_NAME_CHARS).decode("ascii").upper()
    if name in ("BODY", "BODY.PEEK") and reader.peek() == 0x5B:
        section = _section(reader)
        return FetchBody(section, _partial(reader), peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK"):
        part = _binary_section(reader)
        return FetchBody(Section(part), _partial(reader), peek=name == "BINARY.PEEK", binary=True)
    if name == "BINARY.SIZE":
        return FetchBinarySize(_binary_section(reader))
    if name == "PREVIEW":
        return _preview(reader)
    if name in SIMPLE_ATTRIBUTES:
        return FetchAttribute(name)
    raise GrammarError(f"unknown fetch attribute {name}" if name else "expected fetch attribute")


def parse_fetch_items(reader: Reader) -> tuple[FetchItem, ...]:
    # ("ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")")
    if reader.peek() == 0x28:
        items = reader.sequence(lambda: parse_fetch_item(reader))
        if not items:
            raise GrammarError("empty fetch attribute list")
        return items
    for macro, names in MACROS.items():
        if reader.peek_keyword(macro.encode()):
            reader.pos += len(macro)
            return tuple(FetchAttribute(n) for n in names)
    return (parse_fetch_item(reader),)
