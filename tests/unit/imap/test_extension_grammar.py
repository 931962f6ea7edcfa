"""The grammar of the issue-15 extensions: CATENATE (RFC 4469 §5), PREVIEW (RFC 8970 §5), COMPRESS
(RFC 4978 §4), SAVEDATE and OBJECTID search keys and fetch items (RFC 8514 §6, RFC 8474 §7),
OLDER/YOUNGER (RFC 5032 §4)."""

from __future__ import annotations

import datetime

import pytest
from mailstack.services.imap.protocol import (
    Append,
    AppendMessage,
    CatenatePart,
    Command,
    Compress,
    Fetch,
    FetchAttribute,
    FetchPreview,
    ParseError,
    Search,
    SearchAge,
    SearchAnd,
    SearchDate,
    SearchObjectId,
    SearchSaveDateSupported,
    Status,
)
from mailstack.services.imap.protocol import parse_command as parse_with
from mailstack.services.imap.registry import GRAMMAR


def parse(data: bytes) -> Command | ParseError:
    return parse_with(GRAMMAR, data, False)


def test_catenate_parts_in_order_with_multiappend() -> None:
    command = parse(
        b'a APPEND Drafts (\\Seen) CATENATE (URL "/Drafts/;UID=2" TEXT {3}\r\nabc URL ;UID=1 '
        b"TEXT ~{1}\r\n\x01) {2}\r\nhi"
    )
    assert isinstance(command, Command)
    assert command.args == Append(
        "Drafts",
        (
            AppendMessage(
                ("\\Seen",),
                None,
                b"",
                parts=(
                    CatenatePart(url="/Drafts/;UID=2"),
                    CatenatePart(text=b"abc"),
                    CatenatePart(url=";UID=1"),
                    CatenatePart(text=b"\x01", binary=True),
                ),
            ),
            AppendMessage((), None, b"hi"),
        ),
    )


@pytest.mark.parametrize(
    "data",
    [
        b"a APPEND x CATENATE ()",
        b"a APPEND x CATENATE (TEXT abc)",
        b"a APPEND x CATENATE (URL)",
        b'a APPEND x CATENATE (FILE "y")',
        b'a APPEND x CATENATE (URL "y"',
        b'a APPEND x CATENATE (URL "\xc3\xa9")',
        b"a APPEND x CATENATE (" + b" ".join([b'URL "y"'] * 101) + b")",
    ],
)
def test_malformed_catenate_is_bad(data: bytes) -> None:
    assert isinstance(parse(data), ParseError)


def test_preview_and_object_id_fetch_items() -> None:
    command = parse(b"a FETCH 1 (PREVIEW PREVIEW (lazy) SAVEDATE EMAILID THREADID)")
    assert isinstance(command, Command) and isinstance(command.args, Fetch)
    assert command.args.items == (
        FetchPreview(),
        FetchPreview(lazy=True),
        FetchAttribute("SAVEDATE"),
        FetchAttribute("EMAILID"),
        FetchAttribute("THREADID"),
    )
    single = parse(b"a FETCH 1 PREVIEW (LAZY)")
    assert isinstance(single, Command) and isinstance(single.args, Fetch)
    assert single.args.items == (FetchPreview(lazy=True),)
    for bad in (b"a FETCH 1 (PREVIEW ())", b"a FETCH 1 (PREVIEW (FUZZY))", b"a FETCH 1 PREVIEW LAZY"):
        assert isinstance(parse(bad), ParseError)


def test_new_search_keys() -> None:
    command = parse(b"a SEARCH SAVEDSINCE 1-Feb-2024 SAVEDATESUPPORTED EMAILID M1-a_b THREADID T9 OLDER 60 YOUNGER 5")
    assert isinstance(command, Command) and isinstance(command.args, Search)
    assert command.args.key == SearchAnd(
        (
            SearchDate("since", datetime.date(2024, 2, 1), saved=True),
            SearchSaveDateSupported(),
            SearchObjectId("EMAILID", "M1-a_b"),
            SearchObjectId("THREADID", "T9"),
            SearchAge(True, 60),
            SearchAge(False, 5),
        )
    )
    for bad in (b"a SEARCH EMAILID", b"a SEARCH EMAILID M.1", b"a SEARCH OLDER 0", b"a SEARCH SAVEDON x"):
        assert isinstance(parse(bad), ParseError)


def test_compress_and_status_items() -> None:
    assert parse(b"a COMPRESS deflate") == Command("a", "COMPRESS", Compress("DEFLATE"))
    for bad in (b"a COMPRESS", b"a COMPRESS LZ4", b"a COMPRESS DEFLATE x"):
        assert isinstance(parse(bad), ParseError)
    status = parse(b"a STATUS INBOX (SIZE MAILBOXID)")
    assert isinstance(status, Command) and status.args == Status("INBOX", ("SIZE", "MAILBOXID"))


def test_compress_hands_back_what_was_pipelined() -> None:
    # RFC 4978 §3: octets behind COMPRESS are compressed; the receiver hands them back unframed
    from mailstack.services.imap.protocol import CommandReceiver

    receiver = CommandReceiver(GRAMMAR)
    receiver.receive_data(b"z COMPRESS DEFLATE\r\n\x78\x9c\x01\x02")
    assert receiver.next_event() == Command("z", "COMPRESS", Compress("DEFLATE"))
    assert receiver.take_pending() == b"\x78\x9c\x01\x02"
    assert receiver.take_pending() == b""
    receiver.receive_data(b"a LOGIN {5}\r\n")
    receiver.next_event()  # a literal is announced: the command is not framed yet
    with pytest.raises(RuntimeError):
        receiver.take_pending()
