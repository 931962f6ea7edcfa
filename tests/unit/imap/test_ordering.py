"""SORT/THREAD arguments (RFC 5256 §4, RFC 5267 §3) and SORT's order (RFC 5256 §3, RFC 5957 §3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailstack.services.imap.protocol import Command, ParseError, SearchAll, SearchHeader
from mailstack.services.imap.protocol import parse_command as parse_with
from mailstack.services.imap.protocol.ordering import Sort, SortCriterion, Thread
from mailstack.services.imap.registry import GRAMMAR
from mailstack.services.imap.sorting import OrderedMessage, msg_ids, sort_messages
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import message_pb2 as mpb


def parse(data: bytes) -> Command | ParseError:
    return parse_with(GRAMMAR, data, False)


def test_sort_arguments() -> None:
    command = parse(b"a UID SORT RETURN (MIN COUNT) (REVERSE DATE subject) utf-8 FROM bob")
    assert isinstance(command, Command) and command.uid
    assert command.args == Sort(
        (SortCriterion("DATE", True), SortCriterion("SUBJECT")),
        "UTF-8",
        SearchHeader("From", b"bob"),
        ("MIN", "COUNT"),
    )


def test_thread_arguments() -> None:
    command = parse(b'a THREAD references "US-ASCII" ALL')
    assert isinstance(command, Command)
    assert command.args == Thread("REFERENCES", "US-ASCII", SearchAll())


@pytest.mark.parametrize(
    "line",
    [
        b"a SORT\r\n",
        b"a SORT DATE UTF-8 ALL\r\n",
        b"a SORT () UTF-8 ALL\r\n",
        b"a SORT (DATE UTF-8 ALL\r\n",
        b"a SORT (BOGUS) UTF-8 ALL\r\n",
        b"a SORT (DATE REVERSE) UTF-8 ALL\r\n",
        b"a SORT (REVERSE REVERSE DATE) UTF-8 ALL\r\n",
        b"a SORT (DATE)\r\n",
        b"a SORT (DATE) UTF-8\r\n",
        b"a SORT (DATE) UTF-8 \r\n",
        b"a SORT RETURN (PARTIAL 1:2) (DATE) UTF-8 ALL\r\n",
        b"a SORT RETURN (SAVE) (DATE) UTF-8 ALL\r\n",
        b"a SORT (" + b"DATE " * 16 + b"DATE) UTF-8 ALL\r\n",
        b"a THREAD\r\n",
        b"a THREAD BOGUS UTF-8 ALL\r\n",
        b"a THREAD REFERENCES UTF-8\r\n",
        b"a THREAD REFERENCES\r\n",
    ],
)
def test_malformed_is_a_parse_error(line: bytes) -> None:
    assert isinstance(parse(line), ParseError)


def _message(seq: int, subject: bytes, sender: bytes, date: int | None, arrival: int, size: int) -> OrderedMessage:
    envelope = mpb.Envelope(subject=subject)
    getattr(envelope, "from").append(mpb.Address(name=b"", mailbox=sender, host=b"example.org"))
    data = pb.SortData(envelope=envelope.SerializeToString(), internal_date=arrival, size=size)
    if date is not None:
        data.sent_date = date
    return OrderedMessage(seq, seq + 100, data)


def test_date_falls_back_to_internaldate() -> None:
    ms = [_message(1, b"a", b"x", 50, 1, 1), _message(2, b"a", b"x", None, 10, 1)]
    assert [m.seq for m in sort_messages(ms, [SortCriterion("DATE")])] == [2, 1]


def test_group_markers_are_not_addresses() -> None:
    envelope = mpb.Envelope()
    getattr(envelope, "from").extend([mpb.Address(mailbox=b"group"), mpb.Address(mailbox=b"aa", host=b"h")])
    grouped = OrderedMessage(1, 1, pb.SortData(envelope=envelope.SerializeToString()))
    plain = _message(2, b"", b"b", None, 0, 0)
    assert [m.seq for m in sort_messages([plain, grouped], [SortCriterion("FROM")])] == [1, 2]


def test_msg_ids() -> None:
    assert msg_ids(b"<a@b> junk <c\r\n @d>\t<>") == [b"a@b", b"c@d"]


_messages = st.lists(
    st.builds(
        lambda subject, sender, date, arrival, size: (subject, sender, date, arrival, size),
        st.sampled_from([b"a", b"Re: a", b"B", b"b", b""]),
        st.sampled_from([b"x", b"X", b"y"]),
        st.one_of(st.none(), st.integers(0, 3)),
        st.integers(0, 3),
        st.integers(0, 3),
    ),
    max_size=12,
).map(lambda specs: [_message(i, *spec) for i, spec in enumerate(specs, 1)])
_criteria = st.lists(
    st.builds(
        SortCriterion, st.sampled_from(["ARRIVAL", "DATE", "SIZE", "SUBJECT", "FROM", "DISPLAYFROM"]), st.booleans()
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(_messages, _criteria)
def test_sort_is_a_permutation_ordered_by_its_keys(ms: list[OrderedMessage], criteria: list[SortCriterion]) -> None:
    from mailstack.services.imap.sorting import SORT_KEYS

    got = sort_messages(ms, criteria)
    assert sorted(m.seq for m in got) == [m.seq for m in ms]

    def key(m: OrderedMessage) -> tuple[object, ...]:
        # each key, negated for REVERSE (bytes by their complement), then the sequence number
        parts: list[object] = []
        for c in criteria:
            value = SORT_KEYS[c.key](m)
            if isinstance(value, int):
                parts.append(-value if c.reverse else value)
            elif c.reverse:
                parts.append((*(255 - b for b in value), 256))
            else:
                parts.append((*value, -1))
        return (*parts, m.seq)

    assert [m.seq for m in got] == [m.seq for m in sorted(ms, key=key)]
