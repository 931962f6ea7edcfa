"""FETCH items (RFC 3501 §6.4.5) and modifiers (RFC 7162)."""

from __future__ import annotations

import pytest
from mailstack.services.imap.protocol import (
    Command,
    Fetch,
    FetchAttribute,
    FetchBinarySize,
    FetchBody,
    FetchItem,
    ParseError,
    Section,
    SequenceSet,
)
from mailstack.services.imap.protocol import (
    parse_command as parse_with,
)
from mailstack.services.imap.registry import GRAMMAR


def parse_command(data: bytes, utf8: bool = False) -> Command | ParseError:
    """A command parsed with the registry's grammar."""
    return parse_with(GRAMMAR, data, utf8)


def items(text: bytes) -> tuple[FetchItem, ...]:
    command = parse_command(b"t FETCH 1 " + text)
    assert isinstance(command, Command) and isinstance(command.args, Fetch), command
    return command.args.items


def attrs(*names: str) -> tuple[FetchItem, ...]:
    return tuple(FetchAttribute(n) for n in names)


def test_macros_expand() -> None:
    assert items(b"fast") == attrs("FLAGS", "INTERNALDATE", "RFC822.SIZE")
    assert items(b"ALL") == attrs("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")
    assert items(b"FULL") == attrs("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")
    assert isinstance(parse_command(b"t FETCH 1 (ALL)"), ParseError)
    assert isinstance(parse_command(b"t FETCH 1 ALLX"), ParseError)


def test_simple_attributes() -> None:
    names = "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE UID RFC822 RFC822.HEADER RFC822.TEXT MODSEQ"
    assert items(b"(" + names.lower().encode() + b")") == attrs(*names.split())
    assert items(b"uid") == attrs("UID")


@pytest.mark.parametrize(
    ("text", "expected", "label"),
    [
        (b"BODY[]", FetchBody(Section()), b"BODY[]"),
        (b"body.peek[]<0.2048>", FetchBody(Section(), (0, 2048), peek=True), b"BODY[]<0>"),
        (b"BODY[HEADER]", FetchBody(Section((), "HEADER")), b"BODY[HEADER]"),
        (b"BODY[text]", FetchBody(Section((), "TEXT")), b"BODY[TEXT]"),
        (b"BODY[1]", FetchBody(Section((1,))), b"BODY[1]"),
        (b"BODY[4.2.2.1]<10.5>", FetchBody(Section((4, 2, 2, 1)), (10, 5)), b"BODY[4.2.2.1]<10>"),
        (b"BODY[3.MIME]", FetchBody(Section((3,), "MIME")), b"BODY[3.MIME]"),
        (b"BODY[2.HEADER]", FetchBody(Section((2,), "HEADER")), b"BODY[2.HEADER]"),
        (
            b'BODY.PEEK[HEADER.FIELDS (DATE from "X-50%")]',
            FetchBody(Section((), "HEADER.FIELDS", ("DATE", "from", "X-50%")), peek=True),
            b'BODY[HEADER.FIELDS (DATE from "X-50%")]',
        ),
        (
            b"BODY[1.2.HEADER.FIELDS.NOT (Subject)]",
            FetchBody(Section((1, 2), "HEADER.FIELDS.NOT", ("Subject",))),
            b"BODY[1.2.HEADER.FIELDS.NOT (Subject)]",
        ),
        (b"BINARY[1]", FetchBody(Section((1,)), binary=True), b"BINARY[1]"),
        (b"BINARY.PEEK[]<5.5>", FetchBody(Section(), (5, 5), peek=True, binary=True), b"BINARY[]<5>"),
        (b"BINARY.SIZE[1.2]", FetchBinarySize((1, 2)), b"BINARY.SIZE[1.2]"),
    ],
)
def test_sections(text: bytes, expected: FetchItem, label: bytes) -> None:
    assert items(text) == (expected,)
    assert expected.label() == label  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text",
    [
        b"BODY[MIME]",
        b"BODY[0]",
        b"BODY[1.FOO]",
        b"BODY[HEADER.FIELDS ()]",
        b"BODY[HEADER.FIELDS]",
        b"BODY[]<0.0>",
        b"BODY[]<1>",
        b"BODY[",
        b"FOO",
        b"()",
        b"(FLAGS",
        b"BINARY[TEXT]",
        b"BODY.PEEK",
        b"BODY[HEADER.FIELDS (a:b)]",
    ],
)
def test_bad_items(text: bytes) -> None:
    assert isinstance(parse_command(b"t FETCH 1 " + text), ParseError)


def test_changedsince_and_vanished() -> None:
    assert parse_command(b"t FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)") == Command(
        "t", "FETCH", Fetch(SequenceSet.parse("1:*"), attrs("FLAGS"), 12345)
    )
    assert parse_command(b"t UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)") == Command(
        "t", "FETCH", Fetch(SequenceSet.parse("300:500"), attrs("FLAGS"), 12345, True), uid=True
    )
    assert parse_command(b"t FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)") == ParseError(
        "t", "invalid FETCH modifier VANISHED"
    )
    assert parse_command(b"t UID FETCH 1 FLAGS (VANISHED)") == ParseError("t", "VANISHED requires CHANGEDSINCE")
    assert isinstance(parse_command(b"t FETCH 1 FLAGS ()"), ParseError)
