"""CommandReceiver: line framing, keywords, limits, pipelining."""

from __future__ import annotations

from mailstack.services.pop3.protocol import NEED_DATA, Command, CommandReceiver, LineTooLong

from .feeding import assert_events, feed


def test_commands_split_anywhere() -> None:
    assert_events(b"STAT\r\n", [Command("STAT")])
    assert_events(b"retr 1\r\n", [Command("RETR", ("1",), "1")])
    assert_events(b"TOP 2 10\r\n", [Command("TOP", ("2", "10"), "2 10")])


def test_pipelined_commands_come_out_in_order() -> None:
    # RFC 2449 §6.6 PIPELINING: several commands in one read
    data = b"USER a@b.test\r\nPASS s3cret\r\nSTAT\r\nLIST\r\nUIDL 1\r\nQUIT\r\n"
    expected = [
        Command("USER", ("a@b.test",), "a@b.test"),
        Command("PASS", ("s3cret",), "s3cret"),
        Command("STAT"),
        Command("LIST"),
        Command("UIDL", ("1",), "1"),
        Command("QUIT"),
    ]
    assert_events(data, expected)


def test_pass_keeps_spaces_in_rest() -> None:
    assert_events(b"PASS a secret  phrase\r\n", [Command("PASS", ("a", "secret", "phrase"), "a secret  phrase")])


def test_bare_lf_and_empty_lines() -> None:
    assert feed([b"NOOP\n\r\n\nSTAT\n"]) == [Command("NOOP"), Command("STAT")]


def test_need_data_until_line_end() -> None:
    receiver = CommandReceiver()
    receiver.receive_data(b"NOOP\r")
    assert receiver.next_event() == NEED_DATA
    receiver.receive_data(b"\n")
    assert receiver.next_event() == Command("NOOP")
    assert receiver.next_event() == NEED_DATA


def test_invalid_utf8_does_not_raise() -> None:
    [event] = feed([b"USER \xff\xfe\r\n"])
    assert isinstance(event, Command) and event.name == "USER" and event.rest == "\ufffd\ufffd"


def test_over_long_line_is_refused_and_discarded_to_line_end() -> None:
    long_line = b"USER " + b"x" * 2000 + b"\r\n"
    expected = [LineTooLong(), Command("STAT")]
    assert feed([long_line + b"STAT\r\n"], max_line=100) == expected
    chunks = [long_line[i : i + 7] for i in range(0, len(long_line), 7)]
    assert feed([*chunks, b"STAT\r\n"], max_line=100) == expected
    assert feed([long_line[i : i + 1] for i in range(len(long_line))] + [b"STAT\r\n"], max_line=100) == expected


def test_line_at_the_limit_is_accepted() -> None:
    line = b"USER " + b"y" * 95
    assert feed([line + b"\r\n"], max_line=100) == [Command("USER", ("y" * 95,), "y" * 95)]
    assert feed([line + b"z\r\n"], max_line=100) == [LineTooLong()]


def test_buffer_stays_bounded_while_discarding() -> None:
    receiver = CommandReceiver(max_line=100)
    for _ in range(100):
        receiver.receive_data(b"x" * 1000)
        receiver.next_event()
        assert receiver.buffered <= 1100


def test_next_line_returns_raw_sasl_response() -> None:
    receiver = CommandReceiver()
    receiver.receive_data(b"AGFAYgBw\r\nSTAT\r\n")
    assert receiver.next_line() == b"AGFAYgBw"
    assert receiver.next_event() == Command("STAT")


def test_clear_drops_pipelined_plaintext() -> None:
    # after STLS nothing sent in plaintext may be executed (RFC 2595 §4)
    receiver = CommandReceiver()
    receiver.receive_data(b"STLS\r\nUSER evil\r\n")
    assert receiver.next_event() == Command("STLS")
    receiver.clear()
    assert receiver.next_event() == NEED_DATA
