"""BODY[section] plans over stored structures (mailstack.message.sections)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailstack.message.mime import parse_message
from mailstack.message.sections import (
    SectionNotFound,
    SectionPlan,
    apply_header_filter,
    extract_section,
    plan_section,
)
from mailstack.v1 import mailstore_pb2 as pb

from tests.unit.message.samples import SAMPLES, load

ALL, HEADER, FIELDS, FIELDS_NOT, TEXT, MIME = (
    pb.SECTION_ALL,
    pb.SECTION_HEADER,
    pb.SECTION_HEADER_FIELDS,
    pb.SECTION_HEADER_FIELDS_NOT,
    pb.SECTION_TEXT,
    pb.SECTION_MIME,
)


def section(part: list[int], text: int = ALL, fields: list[str] | None = None) -> pb.Section:
    return pb.Section(part=part, text=text, fields=fields or [])  # type: ignore[arg-type]  # unknown values too


def fetch(raw: bytes, part: list[int], text: int = ALL, fields: list[str] | None = None) -> bytes:
    return extract_section(raw, parse_message(raw).structure, section(part, text, fields))


NESTED = load("nested-rfc822.eml")
INNER_HEADER = (
    b"From: Erin <erin@example.test>\r\n"
    b"To: carol@example.test\r\n"
    b"Subject: lunch\r\n"
    b"Date: Mon, 01 Jan 2024 23:30:00 -0500\r\n"
    b"Message-ID: <inner@example.test>\r\n"
    b"X-Long: first line\r\n"
    b"  continued here\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
)
INNER_TEXT = (
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Lunch at noon?\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=us-ascii\r\n"
    b"\r\n"
    b"<p>Lunch at <b>noon</b>?</p>\r\n"
    b"--inner--\r\n"
)


def test_whole_message_sections() -> None:
    header_end = NESTED.index(b"\r\n\r\n") + 4
    assert fetch(NESTED, []) == NESTED
    assert fetch(NESTED, [], HEADER) == NESTED[:header_end]
    assert fetch(NESTED, [], TEXT) == NESTED[header_end:]
    assert fetch(NESTED, [], FIELDS, ["SUBJECT", "to"]) == b"To: dave@example.test\r\nSubject: Fwd: lunch\r\n\r\n"
    assert fetch(NESTED, [], FIELDS, ["x-absent"]) == b"\r\n"
    not_fields = fetch(NESTED, [], FIELDS_NOT, ["from", "to", "date", "message-id", "mime-version"])
    assert not_fields == b'Subject: Fwd: lunch\r\nContent-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    with pytest.raises(SectionNotFound):
        plan_section(parse_message(NESTED).structure, section([], MIME))  # MIME needs a part number


def test_parts_of_a_multipart() -> None:
    assert fetch(NESTED, [1]) == b"See below."
    assert fetch(NESTED, [1], MIME) == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert fetch(NESTED, [2], MIME) == b"Content-Type: message/rfc822\r\nContent-Description: forwarded message\r\n\r\n"
    assert fetch(NESTED, [2]) == INNER_HEADER + INNER_TEXT  # the whole encapsulated message


def test_encapsulated_message_sections() -> None:
    assert fetch(NESTED, [2], HEADER) == INNER_HEADER
    assert fetch(NESTED, [2], TEXT) == INNER_TEXT
    assert fetch(NESTED, [2], FIELDS, ["x-long", "Subject"]) == (
        b"Subject: lunch\r\nX-Long: first line\r\n  continued here\r\n\r\n"
    )  # continuation lines come with their field; order is the message's
    not_fields = fetch(NESTED, [2], FIELDS_NOT, ["From", "To", "Date", "Message-ID", "X-Long"])
    assert not_fields == (
        b"Subject: lunch\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
    )
    # Part numbers continue inside the encapsulated (multipart) message.
    assert fetch(NESTED, [2, 1]) == b"Lunch at noon?"
    assert fetch(NESTED, [2, 2]) == b"<p>Lunch at <b>noon</b>?</p>"
    assert fetch(NESTED, [2, 1], MIME) == b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    assert fetch(NESTED, [2, 2], MIME) == b"Content-Type: text/html; charset=us-ascii\r\n\r\n"


@pytest.mark.parametrize(
    ("part", "text"),
    [
        ([3], ALL),
        ([0], ALL),
        ([1, 1], ALL),  # a text part has no parts
        ([2, 3], ALL),
        ([2, 1, 1], ALL),
        ([1], HEADER),  # HEADER and TEXT after a number need a message/rfc822 part
        ([1], TEXT),
        ([2, 1], FIELDS),
        ([1], 99),  # an enum value this code does not know
    ],
)
def test_missing_sections(part: list[int], text: int) -> None:
    structure = parse_message(NESTED).structure
    with pytest.raises(SectionNotFound):
        plan_section(structure, section(part, text, ["subject"]))
    assert extract_section(NESTED, structure, section(part, text)) == b""  # IMAP answers ""


def test_single_part_message_has_part_one() -> None:
    raw = load("simple.eml")
    assert fetch(raw, [1]) == b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
    assert fetch(raw, [1], MIME) == fetch(raw, [], HEADER)
    for missing in ([2], [1, 1]):
        assert fetch(raw, missing) == b""


def test_message_rfc822_with_a_single_part_inside() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: in\r\nX: y\r\n\r\ninner body\r\n--m--\r\n"
    )
    assert fetch(raw, [1], HEADER) == b"Subject: in\r\nX: y\r\n\r\n"
    assert fetch(raw, [1], TEXT) == b"inner body"
    assert fetch(raw, [1, 1]) == b"inner body"  # part 1 of a non-multipart message is its body
    assert fetch(raw, [1, 1], MIME) == b"Subject: in\r\nX: y\r\n\r\n"
    assert fetch(raw, [1, 2]) == b""


def test_plan_is_a_range_and_a_filter() -> None:
    structure = parse_message(NESTED).structure
    plan = plan_section(structure, section([2], FIELDS_NOT, ["Subject"]))
    assert plan == SectionPlan(
        structure.parts[1].body_offset, structure.parts[1].parts[0].body_offset, (("Subject",), True)
    )
    assert plan_section(structure, section([2, 1])).header_filter is None


def test_header_without_blank_line_and_bare_lf() -> None:
    raw = load("no-blank-line.eml")
    assert fetch(raw, [], FIELDS, ["x-note"]) == b"X-Note: no body follows\r\n\r\n"
    assert fetch(raw, [], TEXT) == b""
    lf = load("bare-lf.eml")
    assert fetch(lf, [], FIELDS, ["subject"]) == b"Subject: bare LF\n\r\n"
    assert fetch(lf, [1]) == b"line one\nline two"
    assert fetch(lf, [2], MIME) == b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"


def test_apply_header_filter() -> None:
    header = b"A: 1\r\nb: 2\r\n\tmore\r\nC: 3\r\nB: 4\r\n\r\n"
    assert apply_header_filter(header, ["b"], False) == b"b: 2\r\n\tmore\r\nB: 4\r\n\r\n"
    assert apply_header_filter(header, ["B"], True) == b"A: 1\r\nC: 3\r\n\r\n"
    assert apply_header_filter(header, [], False) == b"\r\n"
    assert apply_header_filter(header, [], True) == header
    assert apply_header_filter(b"", ["a"], True) == b"\r\n"
    assert apply_header_filter(b" stray continuation\r\nA: 1\r\n", ["a"], True) == b"\r\n"


_PATHS = st.lists(st.integers(0, 4), max_size=4)
_TEXTS = st.sampled_from([ALL, HEADER, FIELDS, FIELDS_NOT, TEXT, MIME, 7])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.binary(max_size=30), st.integers(0, 2000), _PATHS, _TEXTS)
def test_plan_section_only_raises_section_not_found(
    name: str, noise: bytes, where: int, path: list[int], text: int
) -> None:
    raw = load(name)
    raw = raw[:where] + noise + raw[where:]
    structure = parse_message(raw).structure
    try:
        plan = plan_section(structure, section(path, text, ["subject"]))
    except SectionNotFound:
        return
    assert 0 <= plan.start <= plan.end <= len(raw)
    data = extract_section(raw, structure, section(path, text, ["subject"]))
    assert plan.header_filter is not None or data == raw[plan.start : plan.end]
