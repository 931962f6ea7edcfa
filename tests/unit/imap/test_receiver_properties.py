"""Hypothesis: the receiver only ever returns events, whatever the bytes, and how the bytes are
chunked never changes the events."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailstack.services.imap.protocol import CommandReceiver, NeedData, ReceiverState
from mailstack.services.imap.registry import GRAMMAR

from .feeding import feed

FRAGMENTS = [
    b"A1 ",
    b"b2 UID ",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"{3}\r\n",
    b"{2+}\r\n",
    b"~{1}\r\n",
    b"{0}\r\n",
    b"{99}\r\n",
    b"{12+}\r\n",
    b"{" + b"9" * 30 + b"+}\r\n",
    b"(",
    b")",
    b'"',
    b'\\"',
    b"\\",
    b"NIL",
    b"*",
    b"$",
    b"1:*",
    b"&AOk-",
    b"&",
    b"LOGIN ",
    b"SELECT ",
    b"APPEND INBOX ",
    b"FETCH 1:3 ",
    b"SEARCH ",
    b"STORE 1 +FLAGS ",
    b"LIST ",
    b"ID ",
    b"BODY.PEEK[1.HEADER.FIELDS (a b)]<0.5>",
    b"BINARY[1]",
    b"OR NOT ",
    b"HEADER ",
    b"SINCE 1-Feb-1994 ",
    b'" 1-Jan-2020 00:00:00 +0000" ',
    b"(CHANGEDSINCE 5 VANISHED)",
    b"(QRESYNC (1 2 1:5 (1 2)))",
    b"RETURN (",
    b"CHARSET ",
    b"\\Seen ",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
]
# valid commands, to be concatenated and mutated so that the parser's deeper paths are reached
CORPUS = [
    b"a LOGIN {4}\r\nfred {2+}\r\npw\r\n",
    b"a SELECT INBOX (QRESYNC (1 2 1:5 (1:2 3,4)))\r\n",
    b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("%" "&AOk-*") RETURN (CHILDREN STATUS (MESSAGES SIZE))\r\n',
    b'a APPEND INBOX (\\Seen) " 7-Feb-1994 21:52:25 -0800" {3+}\r\nx\x00y ~{1+}\r\nz\r\n',
    b"a UID FETCH 1:*,7 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS.NOT (a)]<0.9> BINARY.SIZE[1]) (CHANGEDSINCE 7 VANISHED)\r\n",
    b'a SEARCH RETURN (MIN) CHARSET "UTF-8" OR (NOT FROM {1}\r\nx) UID 4:* MODSEQ "/flags/\\\\seen" all 3\r\n',
    b"a STORE 1:3 (UNCHANGEDSINCE 9) -FLAGS.SILENT (\\Deleted $x)\r\n",
    b'a ID ("name" NIL) \r\na ENABLE QRESYNC\r\na SETQUOTA "" (STORAGE 5)\r\na CREATE x (USE (\\Sent))\r\n',
    b"a AUTHENTICATE PLAIN =\r\na STATUS x (UIDNEXT)\r\na UID EXPUNGE 1\r\na MOVE 1 y\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data)))
        data[pos : pos + draw(st.integers(0, 2))] = draw(st.binary(max_size=2) | st.sampled_from(FRAGMENTS))
    return bytes(data)


stream = mutated() | st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=12), max_size=25).map(b"".join)
limits = st.fixed_dictionaries({"max_line": st.sampled_from([16, 40, 1000]), "max_literal": st.sampled_from([2, 20])})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | stream, limits, st.data())
def test_chunking_never_changes_events(data: bytes, limit: dict[str, int], draw: st.DataObject) -> None:
    whole = feed([data], **limit)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert feed(chunks, **limit) == whole
    assert feed([data[i : i + 1] for i in range(len(data))], **limit) == whole


@settings(max_examples=300, deadline=None)
@given(stream | st.binary(max_size=200), st.booleans())
def test_receiver_never_raises(data: bytes, utf8: bool) -> None:
    receiver = CommandReceiver(GRAMMAR, max_line=30, max_literal=10)
    receiver.utf8 = utf8
    receiver.receive_data(data)
    for _ in range(10_000):
        if isinstance(receiver.next_event(), NeedData):
            break
    else:
        raise AssertionError("no end of events")
    # line mode on whatever is left never raises either (when not inside a command)
    if not receiver._command and receiver.state not in (
        ReceiverState.LITERAL,
        ReceiverState.SKIP,
        ReceiverState.DISCARD,
    ):
        receiver.receive_data(data)
        for _ in range(10_000):
            if isinstance(receiver.next_line(), NeedData):
                break
