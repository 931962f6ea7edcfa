"""ENVELOPE, BODYSTRUCTURE and part offsets computed at delivery (mailstack.message.mime, .headers, .addresses)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailstack.message.addresses import MAX_ADDRESS_HEADER, parse_addresses
from mailstack.message.mime import MAX_DEPTH, MAX_PARTS, parse_message, parse_mime_value
from mailstack.v1 import mailstore_pb2 as pb

from tests.unit.message.samples import SAMPLES, load


def addr(name: bytes | None, mailbox: bytes | None, host: bytes | None, adl: bytes | None = None) -> pb.Address:
    a = pb.Address()
    for field, value in (("name", name), ("adl", adl), ("mailbox", mailbox), ("host", host)):
        if value is not None:
            setattr(a, field, value)
    return a


GROUP_END = pb.Address()


def body(raw: bytes, part: pb.BodyPart) -> bytes:
    return raw[part.body_offset : part.end_offset]


def mime_header(raw: bytes, part: pb.BodyPart) -> bytes:
    return raw[part.header_offset : part.body_offset]


def params(part: pb.BodyPart | pb.Disposition) -> list[tuple[bytes, bytes]]:
    return [(p.name, p.value) for p in part.params]


def check_invariants(raw: bytes, part: pb.BodyPart, lo: int, hi: int) -> int:
    """Offsets nest inside the parent's body; returns the number of parts."""
    assert lo <= part.header_offset <= part.body_offset <= part.end_offset <= hi
    assert part.size == part.end_offset - part.body_offset
    count = 1
    if part.type.lower() == b"multipart":
        assert part.parts, "a multipart always has at least one part"
    if part.type.lower() == b"message" and part.subtype.lower() in (b"rfc822", b"global"):
        assert len(part.parts) == 1
        inner = part.parts[0]
        assert (inner.header_offset, inner.end_offset) == (part.body_offset, part.end_offset)
    for child in part.parts:
        count += check_invariants(raw, child, part.body_offset, part.end_offset)
    return count


# ---------------------------------------------------------------- samples


def test_simple_text_message() -> None:
    raw = load("simple.eml")
    parsed = parse_message(raw)
    s = parsed.structure
    assert (s.type, s.subtype) == (b"TEXT", b"PLAIN")  # case as written
    assert params(s) == [(b"CHARSET", b"US-ASCII")]
    assert s.encoding == b"7BIT"
    assert body(raw, s) == b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
    assert (s.size, s.lines) == (55, 1)
    assert (s.header_offset, s.body_offset, s.end_offset) == (0, 265, 320)
    assert parsed.header == raw[:265] and parsed.header.endswith(b"CHARSET=US-ASCII\r\n\r\n")
    assert parsed.size == len(raw) == 320
    assert parsed.sent_date == 760686745  # 1994-02-08 05:52:25 UTC
    assert not s.HasField("id") and not s.HasField("md5") and not s.has_disposition and not s.parts

    env = parsed.envelope
    assert env.date == b"Mon, 7 Feb 1994 21:52:25 -0800"
    assert env.subject == b"afternoon meeting"
    fred = addr(b"Fred Foobar", b"foobar", b"Blurdybloop.example")
    assert list(getattr(env, "from")) == [fred]
    assert list(env.sender) == [fred] and list(env.reply_to) == [fred]  # default to From
    assert list(env.to) == [addr(None, b"mooch", b"owatagu.siam.edu.example")]
    assert not env.cc and not env.bcc
    assert not env.HasField("in_reply_to")
    assert env.message_id == b"<B27397-0100000@Blurdybloop.example>"


def test_multipart_alternative() -> None:
    raw = load("alternative.eml")
    s = parse_message(raw).structure
    assert (s.type, s.subtype) == (b"multipart", b"alternative")
    assert params(s) == [(b"boundary", b"=_alt_boundary")]  # folded Content-Type, quotes removed
    assert body(raw, s).startswith(b"--=_alt_boundary\r\n") and body(raw, s).endswith(b"--=_alt_boundary--\r\n")
    plain, html = s.parts
    assert (plain.type, plain.subtype, plain.encoding) == (b"text", b"plain", b"quoted-printable")
    assert params(plain) == [(b"charset", b"utf-8")]
    expected = b"Today: cr=C3=A8me br=C3=BBl=C3=A9e and a very long line that goes on and o=\r\nn."
    assert body(raw, plain) == expected  # the CRLF before the delimiter is not part of the body
    assert (plain.size, plain.lines) == (len(expected), 2)
    assert mime_header(raw, plain) == (
        b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    )
    assert body(raw, html) == b"<p>Today: cr&egrave;me br&ucirc;l&eacute;e</p>"
    assert (html.size, html.lines, html.encoding) == (46, 1, b"7bit")
    env = parse_message(raw).envelope
    assert env.subject == b"Caf=?utf-8?q?=C3=A9?= menu"  # encoded words stay encoded
    assert list(getattr(env, "from")) == [addr(b"Zoe Q. Public", b"zoe", b"example.test")]
    assert list(env.to) == [addr(b"Bob", b"bob", b"example.test"), addr(None, b"alice", b"example.test")]


def test_multipart_mixed_with_attachment() -> None:
    raw = load("mixed-attachment.eml")
    s = parse_message(raw).structure
    assert params(s) == [(b"boundary", b"mixed42")]  # the (comment) is dropped
    text, pdf = s.parts
    assert body(raw, text) == b"Please find the report attached.\r\nRegards"
    assert (text.size, text.lines, text.encoding) == (41, 2, b"8bit")
    assert params(text) == [(b"charset", b"iso-8859-1")]
    assert list(text.language) == [b"en", b"fr"]

    assert (pdf.type, pdf.subtype, pdf.encoding) == (b"application", b"pdf", b"base64")
    assert params(pdf) == [(b"name", b"report.pdf")]
    assert body(raw, pdf) == (
        b"JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoKdHJhaWxlcgo8\r\nPC9Sb290IDEgMCBSPj4KJSVFT0YK"
    )
    assert (pdf.size, pdf.lines) == (106, 0)  # lines only for text and message parts
    assert pdf.has_disposition and pdf.disposition.type == b"attachment"
    # RFC 2231 continuations merged, the charset'language' form left for the client to decode.
    assert params(pdf.disposition) == [(b"filename*", b"utf-8''r%C3%A9sum.pdf")]
    assert pdf.id == b"<att-1@example.test>"
    assert pdf.description == b"The report"
    assert pdf.md5 == b"Q2hlY2sgSW50ZWdyaXR5IQ=="
    assert pdf.location == b"http://example.test/report.pdf"
    # Preamble and epilogue belong to no part.
    assert b"preamble" not in body(raw, text) + body(raw, pdf)
    assert pdf.end_offset == raw.index(b"\r\n--mixed42--")


def test_nested_message_rfc822_that_is_multipart() -> None:
    raw = load("nested-rfc822.eml")
    parsed = parse_message(raw)
    s = parsed.structure
    note, fwd = s.parts
    assert body(raw, note) == b"See below." and (note.size, note.lines) == (10, 1)
    assert (fwd.type, fwd.subtype, fwd.description) == (b"message", b"rfc822", b"forwarded message")
    assert params(fwd) == []
    inner_message = body(raw, fwd)
    assert inner_message.startswith(b"From: Erin <erin@example.test>\r\n")
    assert inner_message.endswith(b"<p>Lunch at <b>noon</b>?</p>\r\n--inner--\r\n")
    assert fwd.size == len(inner_message) == 423
    assert fwd.lines == 19  # lines of the whole encapsulated message
    env = fwd.envelope
    assert env.subject == b"lunch" and env.message_id == b"<inner@example.test>"
    assert list(getattr(env, "from")) == [addr(b"Erin", b"erin", b"example.test")]
    assert list(env.to) == [addr(None, b"carol", b"example.test")]

    (inner,) = fwd.parts
    assert (inner.type, inner.subtype) == (b"multipart", b"alternative")
    assert inner.header_offset == fwd.body_offset
    assert raw[inner.header_offset : inner.body_offset].endswith(b"boundary=inner\r\n\r\n")
    plain, html = inner.parts
    assert body(raw, plain) == b"Lunch at noon?"
    assert body(raw, html) == b"<p>Lunch at <b>noon</b>?</p>"
    assert (plain.size, plain.lines, html.size, html.lines) == (14, 1, 28, 1)
    # The outer envelope is the outer message's.
    assert parsed.envelope.subject == b"Fwd: lunch"
    assert parsed.sent_date == 1704182400  # 2024-01-02 08:00 UTC


def test_rfc2047_subject_groups_routes_and_missing_domain() -> None:
    env = parse_message(load("groups-2047.eml")).envelope
    assert env.subject == (
        b"=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?= =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?="
    )  # unfolded (the CRLF of the fold removed), not decoded
    assert list(getattr(env, "from")) == [addr(b"=?ISO-8859-1?Q?Andr=E9?= Pirard", b"PIRARD", b"vm1.ulg.ac.be")]
    assert list(env.sender) == [addr(b"The Secretary", b"secretary", b"example.test")]  # name from comment
    assert list(env.reply_to) == [
        addr(None, b"Project Team", None),
        addr(None, b"alpha", b"example.test"),
        addr(b"Beta, B.", b"beta", b"example.test"),
        GROUP_END,
        addr(None, b"replies", b"example.test"),
    ]
    assert list(env.to) == [addr(None, b"undisclosed-recipients", None), GROUP_END]
    assert list(env.cc) == [
        addr(None, b"routed", b"example.test", adl=b"@route1.example,@route2.example"),
        addr(None, b"localonly", b"MISSING_DOMAIN"),
    ]
    assert env.in_reply_to == b"<parent@example.test>"
    assert not env.bcc


def test_eight_bit_headers_are_kept_as_bytes() -> None:
    raw = load("eight-bit-header.eml")
    parsed = parse_message(raw)
    env = parsed.envelope
    assert env.subject == "Grüße aus Köln".encode()
    assert list(getattr(env, "from")) == [addr("Jörg Müller".encode(), b"joerg", b"example.test")]
    assert list(env.to) == [addr("Zoë".encode(), b"zoe", b"example.test")]
    assert body(raw, parsed.structure) == "Schöne Grüße!\r\n".encode()
    assert parsed.structure.lines == 1


def test_bare_lf_line_endings() -> None:
    raw = load("bare-lf.eml")
    assert b"\r" not in raw
    parsed = parse_message(raw)
    s = parsed.structure
    assert parsed.header.endswith(b"boundary=b1\n\n")
    one, two = s.parts
    assert body(raw, one) == b"line one\nline two" and (one.size, one.lines) == (17, 2)
    assert mime_header(raw, one) == b"Content-Type: text/plain\n\n"
    assert params(one) == [(b"charset", b"us-ascii")]  # text without charset: us-ascii
    assert body(raw, two) == b"wqFIb2xhIG11bmRvIQ==" and two.encoding == b"base64"
    assert parsed.sent_date is None and not parsed.envelope.HasField("date")


def test_garbage_is_one_text_part_covering_everything() -> None:
    raw = load("garbage.eml")
    parsed = parse_message(raw)
    s = parsed.structure
    assert (s.type, s.subtype, s.encoding) == (b"text", b"plain", b"7BIT")
    assert params(s) == [(b"charset", b"us-ascii")]
    assert (s.header_offset, s.body_offset, s.end_offset, s.size) == (0, 0, len(raw), len(raw))
    assert s.lines == raw.count(b"\n") + (not raw.endswith(b"\n"))
    assert parsed.header == b"" and parsed.envelope == pb.Envelope()


def test_no_blank_line_means_all_header_and_nil_for_missing_fields() -> None:
    raw = load("no-blank-line.eml")
    parsed = parse_message(raw)
    assert parsed.header == raw and not raw.endswith(b"\n")
    s = parsed.structure
    assert (s.body_offset, s.end_offset, s.size, s.lines) == (len(raw), len(raw), 0, 0)
    env = parsed.envelope
    assert env.subject == b"only headers"
    for field in ("date", "in_reply_to", "message_id"):
        assert not env.HasField(field)  # NIL
    assert not env.to and not env.cc and not env.bcc


def test_body_that_starts_without_header_lines() -> None:
    raw = b"Just some text\r\nwith: a colon later\r\n"
    s = parse_message(raw).structure
    assert (s.body_offset, s.size) == (0, len(raw))


# ---------------------------------------------------------------- MIME edge cases


def test_multipart_edge_cases() -> None:
    # No body part at all: one empty text/plain part, so BODYSTRUCTURE stays valid.
    raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\nonly a preamble\r\n"
    s = parse_message(raw).structure
    (empty,) = s.parts
    assert (empty.type, empty.size, empty.body_offset) == (b"text", 0, len(raw))
    # No boundary parameter.
    assert len(parse_message(b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\na\r\n").structure.parts) == 1
    # No close delimiter: the last part runs to the end.
    raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\na\r\n--x\r\n\r\nbb\r\n"
    a, bb = parse_message(raw).structure.parts
    assert (body(raw, a), body(raw, bb)) == (b"a", b"bb\r\n")
    # A delimiter needs a line of its own; "--x" followed by text is content; padding is allowed.
    raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\n--xyz\r\n--x  \r\n\r\nb\r\n--x--  \r\n"
    a, b = parse_message(raw).structure.parts
    assert (body(raw, a), body(raw, b)) == (b"--xyz", b"b")
    # An empty part between two adjacent delimiters.
    raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n--x\r\n\r\nb\r\n--x--\r\n"
    a, b = parse_message(raw).structure.parts
    assert (a.size, body(raw, b)) == (0, b"b")


def test_digest_parts_default_to_message_rfc822() -> None:
    raw = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\nfirst\r\n"
        b"--d\r\nContent-Type: text/plain\r\n\r\nplain\r\n--d--\r\n"
    )
    msg, text = parse_message(raw).structure.parts
    assert (msg.type, msg.subtype) == (b"message", b"rfc822")
    assert msg.envelope.subject == b"one" and body(raw, msg.parts[0]) == b"first"
    assert (msg.lines, text.type) == (3, b"text")


def test_message_rfc822_with_single_part_inner() -> None:
    raw = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nhello\r\n"
    s = parse_message(raw).structure
    (inner,) = s.parts
    assert s.envelope.subject == b"in" and (s.lines, s.size) == (3, len(b"Subject: in\r\n\r\nhello\r\n"))
    assert body(raw, inner) == b"hello\r\n" and (inner.type, inner.lines) == (b"text", 1)


def test_invalid_content_type_falls_back_to_text_plain() -> None:
    for value in (b"text", b"/plain", b"text/", b"te xt/plain", b";;;", b""):
        s = parse_message(b"Content-Type: " + value + b"\r\n\r\nx").structure
        assert (s.type, s.subtype, params(s)) == (b"text", b"plain", [(b"charset", b"us-ascii")]), value


def test_nesting_is_limited_and_the_structure_round_trips() -> None:
    depth = MAX_DEPTH + 20
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    raw += b"\r\ninnermost\r\n"
    s = parse_message(raw).structure
    levels = 0
    node = s
    while node.parts:
        node, levels = node.parts[0], levels + 1
    assert levels <= MAX_DEPTH
    assert (node.type, node.subtype) == (b"application", b"octet-stream")
    # Stored as bytes and read back: must stay under protobuf's nesting limit.
    assert pb.BodyPart.FromString(s.SerializeToString()) == s
    wrapped = pb.MessageMetadata(body_structure=s)
    assert pb.MessageMetadata.FromString(wrapped.SerializeToString()) == wrapped


def test_number_of_parts_is_limited() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * (MAX_PARTS + 500) + b"--b--\r\n"
    s = parse_message(raw).structure
    assert len(s.parts) <= MAX_PARTS
    check_invariants(raw, s, 0, len(raw))


# ---------------------------------------------------------------- header values


def test_parse_mime_value() -> None:
    assert parse_mime_value(b'text/plain; charset="us-ascii" (Plain text)') == (
        b"text/plain",
        [(b"charset", b"us-ascii")],
    )
    assert parse_mime_value(b'a/b; x="semi;colon \\"q\\""; bare=tok en; =skip; noeq') == (
        b"a/b",
        [(b"x", b'semi;colon "q"'), (b"bare", b"tok en")],
    )
    # RFC 2231: plain continuations joined; name*= left as is.
    assert parse_mime_value(b"a/b; t*1=\"wo\"; t*0=hel; t*2=rld; n*=us-ascii'en'x%20y") == (
        b"a/b",
        [(b"t", b"helworld"), (b"n*", b"us-ascii'en'x%20y")],
    )
    assert parse_mime_value(b'a/b; f*0="a b"; f*1*=%41') == (b"a/b", [(b"f*", b"''a%20b%41")])


def test_address_edge_cases() -> None:
    assert parse_addresses(b"") == [] and parse_addresses(None) == []
    assert parse_addresses(b"<>") == []
    assert parse_addresses(b",,, ;") == []
    assert parse_addresses(b"(comment) a@b.example") == [addr(b"comment", b"a", b"b.example")]
    assert parse_addresses(b'"quoted \\"name\\"" <x@y>') == [addr(b'quoted "name"', b"x", b"y")]
    assert parse_addresses(b'"john doe"@example.test') == [addr(None, b"john doe", b"example.test")]
    assert parse_addresses(b"a@[192.0.2.1]") == [addr(None, b"a", b"[192.0.2.1]")]
    assert parse_addresses(b"Name <>") == [addr(b"Name", b"MISSING_MAILBOX", b"MISSING_DOMAIN")]
    assert parse_addresses(b"a@b c@d, e@f") == [addr(None, b"a", b"b"), addr(None, b"e", b"f")]
    assert parse_addresses(b"G: a@b") == [addr(None, b"G", None), addr(None, b"a", b"b"), GROUP_END]
    assert parse_addresses(b"a) <b@c>") == [addr(b"a)", b"b", b"c")]  # a stray parenthesis
    assert parse_addresses(b"x <a@b") == [addr(b"x", b"a", b"b")]  # unterminated angle address
    assert parse_addresses(b'"unterminated <a@b>') == [addr(None, b"unterminated <a@b>", b"MISSING_DOMAIN")]


def test_huge_address_headers_are_cut_between_addresses() -> None:
    value = b", ".join(b"user%d@example.test" % i for i in range(20_000))
    found = parse_addresses(value)
    assert 1000 < len(found) < 20_000 and len(value) > MAX_ADDRESS_HEADER
    assert found[-1].host == b"example.test" and found[-1].mailbox == b"user%d" % (len(found) - 1)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=100), st.text(alphabet='()<>@,;:.[]"\\ \tab=?\r\n', max_size=60).map(str.encode)))
def test_parse_addresses_never_raises(value: bytes) -> None:
    for a in parse_addresses(value):
        assert a.HasField("host") <= a.HasField("mailbox")  # host without mailbox is no IMAP address


def test_header_occurrences_and_folding() -> None:
    raw = b"Subject: first\r\n  folded\r\nSubject: second\r\nDate: garbage\r\n\r\n"
    parsed = parse_message(raw)
    assert parsed.envelope.subject == b"first  folded"  # only the CRLF of the fold goes
    assert parsed.envelope.date == b"garbage" and parsed.sent_date is None
    assert parse_message(b"Date: Mon, 7 Feb 1994 21:52:25 -0000\r\n\r\n").sent_date == 760686745 - 8 * 3600


# ---------------------------------------------------------------- properties


def test_every_sample_keeps_the_invariants() -> None:
    for name in SAMPLES:
        raw = load(name)
        parsed = parse_message(raw)
        check_invariants(raw, parsed.structure, 0, len(raw))
        assert parsed.structure.end_offset == len(raw) and parsed.header == raw[: parsed.structure.body_offset]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.size == len(raw)
    check_invariants(raw, parsed.structure, 0, len(raw))


_FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"--",
    b"\x00",
    b"\xff",
    b":",
    b";",
    b'"',
    b"(",
    b")",
    b"[",
    b"]",
    b"<",
    b">",
    b",",
    b"@",
    b"=?",
    b" ",
    b"\r\n\r\n",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SAMPLES),
    st.lists(
        st.tuples(
            st.floats(0, 1),
            st.integers(0, 40),
            st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=8)),
        ),
        max_size=8,
    ),
)
def test_parse_never_raises_on_mutated_messages(name: str, edits: list[tuple[float, int, bytes]]) -> None:
    raw = load(name)
    for where, cut, insert in edits:  # replace raw[i:i+cut] with the fragment
        i = int(where * len(raw))
        raw = raw[:i] + insert + raw[i + cut :]
    parsed = parse_message(raw)
    check_invariants(raw, parsed.structure, 0, len(raw))
    assert pb.BodyPart.FromString(parsed.structure.SerializeToString()) == parsed.structure


def test_crlf_only_is_recorded_at_the_top_level() -> None:
    assert parse_message(b"Subject: a\r\n\r\nbody\r\n.dot\r\n").structure.crlf
    assert parse_message(b"").structure.crlf  # nothing to normalise
    for raw in (b"Subject: a\n\nbody\n", b"Subject: a\r\n\r\nx\ry\r\n", b"Subject: a\r\n\r\nx\n\r", b"a\r"):
        assert not parse_message(raw).structure.crlf, raw


@given(st.binary(max_size=300))
def test_crlf_only_agrees_with_a_line_split(raw: bytes) -> None:
    lines = raw.split(b"\r\n")
    assert parse_message(raw).structure.crlf == all(b"\r" not in line and b"\n" not in line for line in lines)
