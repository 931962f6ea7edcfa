"""SEARCH criteria (RFC 3501 §6.4.4) into the key tree."""

from __future__ import annotations

import datetime

import pytest
from mailstack.services.imap.protocol import (
    Command,
    ParseError,
    Search,
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    SequenceSet,
)
from mailstack.services.imap.protocol import (
    parse_command as parse_with,
)
from mailstack.services.imap.registry import GRAMMAR

from .feeding import assert_events, parse_one


def parse_command(data: bytes, utf8: bool = False) -> Command | ParseError:
    """A command parsed with the registry's grammar."""
    return parse_with(GRAMMAR, data, utf8)


def key(criteria: bytes) -> SearchKey:
    command = parse_command(b"t SEARCH " + criteria)
    assert isinstance(command, Command) and isinstance(command.args, Search), command
    return command.args.key


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        (b"ALL", SearchAll()),
        (b"answered", SearchFlag("\\Answered")),
        (b"DELETED", SearchFlag("\\Deleted")),
        (b"DRAFT", SearchFlag("\\Draft")),
        (b"FLAGGED", SearchFlag("\\Flagged")),
        (b"RECENT", SearchFlag("\\Recent")),
        (b"SEEN", SearchFlag("\\Seen")),
        (b"UNANSWERED", SearchFlag("\\Answered", False)),
        (b"UNDELETED", SearchFlag("\\Deleted", False)),
        (b"UNDRAFT", SearchFlag("\\Draft", False)),
        (b"UNFLAGGED", SearchFlag("\\Flagged", False)),
        (b"UNSEEN", SearchFlag("\\Seen", False)),
        (b"OLD", SearchFlag("\\Recent", False)),
        (b"NEW", SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False)))),
        (b"KEYWORD $Junk", SearchFlag("$Junk")),
        (b"UNKEYWORD $Junk", SearchFlag("$Junk", False)),
        (b"BCC a", SearchHeader("Bcc", b"a")),
        (b'CC "b c"', SearchHeader("Cc", b"b c")),
        (b"FROM {3+}\r\nx\xc3\xa9", SearchHeader("From", "xé".encode())),
        (b"SUBJECT hi", SearchHeader("Subject", b"hi")),
        (b"TO d", SearchHeader("To", b"d")),
        (b'HEADER Message-ID "<x@y>"', SearchHeader("Message-ID", b"<x@y>")),
        (b'HEADER X-Empty ""', SearchHeader("X-Empty", b"")),
        (b"BODY word", SearchText(b"word", body_only=True)),
        (b"TEXT word", SearchText(b"word", body_only=False)),
        (b"BEFORE 1-Feb-1994", SearchDate("before", datetime.date(1994, 2, 1))),
        (b'ON "01-feb-1994"', SearchDate("on", datetime.date(1994, 2, 1))),
        (b"SINCE 31-Dec-1999", SearchDate("since", datetime.date(1999, 12, 31))),
        (b"SENTBEFORE 1-Feb-1994", SearchDate("before", datetime.date(1994, 2, 1), sent=True)),
        (b"SENTON 1-Feb-1994", SearchDate("on", datetime.date(1994, 2, 1), sent=True)),
        (b"SENTSINCE 1-Feb-1994", SearchDate("since", datetime.date(1994, 2, 1), sent=True)),
        (b"LARGER 1000", SearchSize(True, 1000)),
        (b"SMALLER 5", SearchSize(False, 5)),
        (b"OLDER 3600", SearchAge(True, 3600)),
        (b"YOUNGER 60", SearchAge(False, 60)),
        (b"UID 1:5,7", SearchSequence(SequenceSet.parse("1:5,7"), uid=True)),
        (b"2:*", SearchSequence(SequenceSet.parse("2:*"))),
        (b"$", SearchSequence(SequenceSet(saved=True))),
        (b"MODSEQ 620162338", SearchModSeq(620162338)),
        (b'MODSEQ "/flags/\\\\draft" all 620162338', SearchModSeq(620162338, "/flags/\\draft", "all")),
        (b"NOT SEEN", SearchNot(SearchFlag("\\Seen"))),
        (b"OR SEEN FLAGGED", SearchOr(SearchFlag("\\Seen"), SearchFlag("\\Flagged"))),
        (b"(SEEN)", SearchFlag("\\Seen")),
        (
            b"OR (FROM a NOT (SUBJECT b)) (OR 1:3 (UID 9))",
            SearchOr(
                SearchAnd((SearchHeader("From", b"a"), SearchNot(SearchHeader("Subject", b"b")))),
                SearchOr(SearchSequence(SequenceSet.parse("1:3")), SearchSequence(SequenceSet.parse("9"), True)),
            ),
        ),
        (
            b"FLAGGED SINCE 1-Feb-1994 NOT FROM Smith",
            SearchAnd(
                (
                    SearchFlag("\\Flagged"),
                    SearchDate("since", datetime.date(1994, 2, 1)),
                    SearchNot(SearchHeader("From", b"Smith")),
                )
            ),
        ),
    ],
)
def test_every_search_key(criteria: bytes, expected: SearchKey) -> None:
    assert key(criteria) == expected


def test_charset_and_return_options() -> None:
    cmd = parse_one(b"A282 SEARCH RETURN (MIN COUNT SAVE) CHARSET utf-8 TEXT {3}\r\nxyz\r\n")
    assert cmd.args == Search(SearchText(b"xyz", False), "UTF-8", ("MIN", "COUNT", "SAVE"))
    assert parse_one(b"a UID SEARCH RETURN () ALL\r\n") == Command("a", "SEARCH", Search(SearchAll(), None, ()), True)
    assert parse_one(b'a SEARCH CHARSET "ISO-8859-1" ALL\r\n').args == Search(SearchAll(), "ISO-8859-1")


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        (b"", "expected atom"),
        (b"FOO", "unknown search key FOO"),
        (b"OR SEEN", "expected SP"),
        (b"()", "empty search key list"),
        (b"(SEEN", "expected SP"),
        (b"BEFORE 30-Feb-2020", "invalid date"),
        (b"BEFORE 1-Foo-2020", "invalid month"),
        (b"KEYWORD \\Seen", "KEYWORD takes a keyword, not a system flag"),
        (b"HEADER {4}\r\na:b: x", "invalid header field name"),
        (b"LARGER x", "expected number"),
        (b"UID 0", "expected non-zero number"),
        (b"RETURN (BOGUS) ALL", "unknown SEARCH return option"),
        (b"(" * 200 + b"ALL" + b")" * 200, "search criteria nested too deeply"),
        (b"NOT " * 200 + b"ALL", "search criteria nested too deeply"),
    ],
)
def test_bad_criteria(criteria: bytes, message: str) -> None:
    assert parse_command(b"t SEARCH " + criteria) == ParseError("t", message)


def test_search_with_literals_split_anywhere() -> None:
    data = b"t SEARCH OR SUBJECT {2}\r\nab HEADER {1+}\r\nX {0}\r\n\r\n"
    expected = Search(SearchOr(SearchHeader("Subject", b"ab"), SearchHeader("X", b"")))
    events = parse_one(data)
    assert events.args == expected
    from mailstack.services.imap.protocol import NeedLiteral

    assert_events(data, [NeedLiteral(2, True), NeedLiteral(0, True), Command("t", "SEARCH", expected)])
