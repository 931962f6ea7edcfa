"""CommandReceiver framing: literals, limits, errors and line mode."""

from __future__ import annotations

import pytest
from mailstack.services.imap.protocol import (
    NEED_DATA,
    Append,
    AppendMessage,
    Command,
    CommandReceiver,
    LiteralTooBig,
    Login,
    NeedLiteral,
    NoArguments,
    ParseError,
)
from mailstack.services.imap.registry import GRAMMAR

from .feeding import FOLLOWER, FOLLOWER_EVENT, assert_events, events_for

NOOP = NoArguments()


def test_simple_commands_split_anywhere() -> None:
    assert_events(b"a001 NOOP\r\n", [Command("a001", "NOOP", NOOP)])
    assert_events(b"A023 LOGOUT\r\n", [Command("A023", "LOGOUT", NOOP)])
    assert_events(b"x capability\r\ny Noop\r\n", [Command("x", "CAPABILITY", NOOP), Command("y", "NOOP", NOOP)])


def test_stray_empty_lines_are_ignored() -> None:
    assert_events(b"\r\n\r\nA1 NOOP\r\n", [Command("A1", "NOOP", NOOP)])


def test_need_data_until_crlf() -> None:
    receiver = CommandReceiver(GRAMMAR)
    receiver.receive_data(b"A1 NOOP\r")
    assert receiver.next_event() == NEED_DATA
    receiver.receive_data(b"\n")
    assert receiver.next_event() == Command("A1", "NOOP", NOOP)
    assert receiver.next_event() == NEED_DATA


def test_synchronizing_literal_asks_once_per_literal() -> None:
    data = b'A1 LOGIN {4}\r\nfred {7}\r\nse"cr t\r\n'
    assert_events(
        data,
        [NeedLiteral(4, True), NeedLiteral(7, True), Command("A1", "LOGIN", Login("fred", 'se"cr t'))],
    )


def test_need_literal_comes_before_the_literal_octets() -> None:
    receiver = CommandReceiver(GRAMMAR)
    receiver.receive_data(b"A1 LOGIN {4}\r\n")
    assert receiver.next_event() == NeedLiteral(4, True)
    assert receiver.current_tag == "A1"
    assert receiver.next_event() == NEED_DATA
    receiver.receive_data(b"fred ")
    assert receiver.next_event() == NEED_DATA
    receiver.receive_data(b"pw\r\n")
    assert receiver.next_event() == Command("A1", "LOGIN", Login("fred", "pw"))


def test_non_synchronizing_literal_needs_no_continuation() -> None:
    assert_events(b"A1 LOGIN {4+}\r\nfred {2+}\r\npw\r\n", [Command("A1", "LOGIN", Login("fred", "pw"))])


def test_literal_octets_are_opaque() -> None:
    # CRLF, NUL, 8-bit and a fake literal header inside a literal are data
    message = b"Subject: x\r\n\r\n\x00\xff body {5}\r\nA2 NOOP\r\n"
    data = b"A1 APPEND INBOX {%d}\r\n" % len(message) + message + b"\r\n"
    expected = Command("A1", "APPEND", Append("INBOX", (AppendMessage((), None, message),)))
    assert_events(data, [NeedLiteral(len(message), True), expected])


def test_zero_length_literal() -> None:
    assert_events(b"A1 LOGIN {0}\r\n {0+}\r\n\r\n", [NeedLiteral(0, True), Command("A1", "LOGIN", Login("", ""))])


def test_malformed_command_gives_bad_with_tag_and_continues() -> None:
    assert_events(b"A1 FROB x\r\n", [ParseError("A1", "unknown command FROB")])
    assert_events(b"A2 LOGIN onlyuser\r\n", [ParseError("A2", "expected SP")])
    assert_events(b"A3 FETCH 0 FLAGS\r\n", [ParseError("A3", "expected non-zero number")])
    assert_events(b"A4 NOOP extra\r\n", [ParseError("A4", "unexpected characters at end of command")])


def test_malformed_tag_gives_untagged_bad() -> None:
    assert_events(b"+ NOOP\r\n", [ParseError(None, "invalid tag")])
    assert_events(b"(x) NOOP\r\n", [ParseError(None, "invalid tag")])
    [event] = events_for(b"A1\r\n")
    assert isinstance(event, ParseError) and event.tag == "A1" and not event.fatal


def test_literal_header_not_at_end_of_line_is_bad() -> None:
    assert_events(b"A1 LOGIN {3} x\r\n", [ParseError("A1", "expected CRLF after literal header")])


def test_long_line_is_refused_and_discarded() -> None:
    long = b"A1 LOGIN " + b"x" * 100 + b" y\r\n"
    assert_events(long, [ParseError("A1", "command line too long")], max_line=40)
    # a line of exactly max_line octets is fine
    exact = b"A1 LOGIN " + b"x" * 29 + b" y"
    assert len(exact) == 40
    assert_events(exact + b"\r\n", [Command("A1", "LOGIN", Login("x" * 29, "y"))], max_line=40)
    assert_events(exact + b"z\r\n", [ParseError("A1", "command line too long")], max_line=40)


def test_long_line_never_buffers_more_than_the_limit() -> None:
    receiver = CommandReceiver(GRAMMAR, max_line=100)
    receiver.receive_data(b"A1 SEARCH TEXT ")
    assert receiver.next_event() == NEED_DATA
    events = []
    for _ in range(1000):
        receiver.receive_data(b"y" * 1000)
        events.append(receiver.next_event())
        assert len(receiver._buffer) <= 1000 + 100
    assert events[0] == ParseError("A1", "command line too long")
    assert set(events[1:]) == {NEED_DATA}
    receiver.receive_data(b"\r\n" + FOLLOWER)
    assert receiver.next_event() == FOLLOWER_EVENT


def test_long_line_in_the_middle_of_a_command() -> None:
    data = b"A1 LOGIN {2+}\r\nab " + b"z" * 60 + b"\r\n"
    assert_events(data, [ParseError("A1", "command line too long")], max_line=40)


def test_long_line_ending_in_literal_plus_skips_that_literal() -> None:
    data = b"A1 APPEND INBOX " + b"(" * 50 + b" {6+}\r\nA2 X\r\n\r\n"
    assert_events(data, [ParseError("A1", "command line too long")], max_line=40)


def test_huge_synchronizing_literal_announced() -> None:
    # the server answers NO [TOOBIG]; the client sends nothing more for this command
    data = b"A1 APPEND INBOX {1000}\r\n"
    assert_events(data, [LiteralTooBig("A1", 1000, True)], max_literal=999)


def test_huge_non_synchronizing_literal_is_skipped_not_buffered() -> None:
    data = b"A1 APPEND INBOX (\\Seen) {20+}\r\n" + b"m" * 20 + b" {3+}\r\nabc\r\n"
    assert_events(data, [LiteralTooBig("A1", 20, False)], max_literal=10)
    receiver = CommandReceiver(GRAMMAR, max_literal=1000)
    receiver.receive_data(b"A1 APPEND INBOX {100000000+}\r\n")
    assert receiver.next_event() == LiteralTooBig("A1", 100000000, False)
    for _ in range(100):
        receiver.receive_data(b"\x00" * 1_000_000)
        assert receiver.next_event() == NEED_DATA
        assert len(receiver._buffer) == 0
    receiver.receive_data(b"\r\n" + FOLLOWER)
    assert receiver.next_event() == FOLLOWER_EVENT


def test_many_small_literals_are_bounded_too() -> None:
    data = b"A1 LOGIN {0+}\r\n" + b" {0+}\r\n" * 10 + b"\r\n"
    events = events_for(data, max_line=20, max_literal=50)
    assert isinstance(events[0], LiteralTooBig) and not events[0].synchronizing


def test_absurd_literal_size_is_fatal() -> None:
    data = b"A1 APPEND INBOX {" + b"9" * 25 + b"+}\r\nwhatever\r\n"
    assert_events(data, [ParseError("A1", "literal size out of range", fatal=True)], complete=False)


def test_absurd_synchronizing_literal_size_is_refused_and_the_session_goes_on() -> None:
    receiver = CommandReceiver(GRAMMAR)
    receiver.receive_data(b"A1 LOGIN {" + b"9" * 25 + b"}\r\n" + FOLLOWER)
    assert receiver.next_event() == ParseError("A1", "literal size out of range")
    assert receiver.next_event() == FOLLOWER_EVENT


def test_reject_literal_drops_the_command() -> None:
    receiver = CommandReceiver(GRAMMAR)
    receiver.receive_data(b"A1 APPEND INBOX {50}\r\n")
    assert receiver.next_event() == NeedLiteral(50, True)
    receiver.reject_literal()
    receiver.receive_data(FOLLOWER)
    assert receiver.next_event() == FOLLOWER_EVENT
    with pytest.raises(RuntimeError):
        receiver.reject_literal()


def test_next_line_for_authenticate_and_idle() -> None:
    receiver = CommandReceiver(GRAMMAR, max_line=24)
    receiver.receive_data(b"A1 AUTHENTICATE PLAIN\r\nAGZyZWQAcHc=\r\nA2 IDLE\r\nDO")
    first = receiver.next_event()
    assert isinstance(first, Command) and first.name == "AUTHENTICATE"
    assert receiver.next_line() == b"AGZyZWQAcHc="
    second = receiver.next_event()
    assert isinstance(second, Command) and second.name == "IDLE"
    assert receiver.next_line() == NEED_DATA
    receiver.receive_data(b"NE\r\n" + b"x" * 30)
    assert receiver.next_line() == b"DONE"
    assert receiver.next_line() == ParseError(None, "line too long")
    receiver.receive_data(b"x" * 30 + b"\r\n*\r\n")
    assert receiver.next_line() == b"*"


def test_next_line_refused_in_the_middle_of_a_command() -> None:
    receiver = CommandReceiver(GRAMMAR)
    receiver.receive_data(b"A1 LOGIN {3}\r\n")
    receiver.next_event()
    with pytest.raises(RuntimeError):
        receiver.next_line()
