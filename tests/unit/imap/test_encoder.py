"""Response encoding: strings, lists, dates and response lines."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st
from mailstack.services.imap.protocol import Command, NeedLiteral, Search, SearchHeader, SequenceSet
from mailstack.services.imap.protocol import encoder as enc
from mailstack.services.imap.protocol.grammar import Reader

from .feeding import events_for


def test_astring_choice() -> None:
    assert enc.astring(b"INBOX") == b"INBOX"
    assert enc.astring("foo]bar") == b"foo]bar"
    assert enc.astring(b"") == b'""'
    assert enc.astring(b"nil") == b'"nil"'
    assert enc.astring(b"a b") == b'"a b"'
    assert enc.astring(b'say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'
    assert enc.astring(b"a*b") == b'"a*b"'
    assert enc.astring(b"line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert enc.astring(b"nul\x00") == b"{4}\r\nnul\x00"
    assert enc.astring("é") == b"{2}\r\n\xc3\xa9"
    assert enc.astring("é", utf8=True) == '"é"'.encode()
    assert enc.astring(b"\xff", utf8=True) == b"{1}\r\n\xff"


def test_strings_and_lists() -> None:
    assert enc.string(b"INBOX") == b'"INBOX"'
    assert enc.nstring(None) == b"NIL"
    assert enc.nil_or_string(b"NIL") == b'"NIL"'
    assert enc.paren_list([b"a", b"b"]) == b"(a b)"
    assert enc.nil_or_list([]) == b"NIL"
    assert enc.flag_list(["\\Seen", "$Junk"]) == b"(\\Seen $Junk)"
    assert enc.flag_list([]) == b"()"
    assert enc.literal8(b"\x00") == b"~{1}\r\n\x00"
    assert enc.mailbox("Entwürfe") == b"Entw&APw-rfe"
    assert enc.mailbox("a b&") == b'"a b&-"'
    assert enc.mailbox("Entwürfe", utf8=True) == '"Entwürfe"'.encode()


def test_date_time() -> None:
    tz = datetime.timezone(datetime.timedelta(hours=-8))
    assert enc.date_time(datetime.datetime(1994, 2, 7, 21, 52, 25, tzinfo=tz)) == b'" 7-Feb-1994 21:52:25 -0800"'
    ist = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    assert enc.date_time(datetime.datetime(2024, 12, 17, 1, 2, 3, tzinfo=ist)) == b'"17-Dec-2024 01:02:03 +0530"'
    assert enc.date_time(datetime.datetime(2024, 1, 1)) == b'" 1-Jan-2024 00:00:00 +0000"'


@given(
    st.datetimes(min_value=datetime.datetime(1000, 1, 1), timezones=st.just(datetime.UTC)),
    st.integers(-23 * 60, 23 * 60),
)
def test_date_time_round_trip(value: datetime.datetime, offset: int) -> None:
    value = value.replace(microsecond=0).astimezone(datetime.timezone(datetime.timedelta(minutes=offset)))
    assert Reader(enc.date_time(value)).date_time() == value


def test_response_lines() -> None:
    assert enc.tagged("A1", "OK", "LOGIN completed") == b"A1 OK LOGIN completed\r\n"
    assert enc.tagged("A2", "NO", "no such mailbox", "TRYCREATE") == b"A2 NO [TRYCREATE] no such mailbox\r\n"
    assert enc.tagged("A3", "BAD", "bad\r\nthing") == b"A3 BAD bad  thing\r\n"
    assert (
        enc.untagged_status("OK", "UIDs valid", b"UIDVALIDITY 3857529045")
        == b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
    )
    assert enc.untagged(b"172 EXISTS") == b"* 172 EXISTS\r\n"
    assert enc.continuation() == b"+ go ahead\r\n"
    assert enc.fetch_response(12, [(b"UID", b"7"), (b"FLAGS", b"(\\Seen)")]) == b"* 12 FETCH (UID 7 FLAGS (\\Seen))\r\n"


@given(st.binary(max_size=40).filter(lambda b: b"\x00" not in b))
def test_astring_round_trip(value: bytes) -> None:
    encoded = enc.astring(value)
    reader = Reader(encoded)
    assert reader.astring() == value and reader.at_end()
    # and through the receiver, as a client would send it
    events = events_for(b"A1 SEARCH HEADER X " + encoded + b"\r\n")
    assert [e for e in events if not isinstance(e, NeedLiteral)] == [
        Command("A1", "SEARCH", Search(SearchHeader("X", value)))
    ]


@given(st.binary(max_size=20).filter(lambda b: b"\x00" not in b) | st.none())  # strings are CHAR8 (no NUL)
def test_nstring_round_trip(value: bytes | None) -> None:
    reader = Reader(enc.nstring(value))
    assert reader.nstring() == value and reader.at_end()


def test_sequence_set_bytes_round_trip() -> None:
    s = SequenceSet.parse("1:3,5,*:9")
    assert SequenceSet.parse(bytes(s)) == s
