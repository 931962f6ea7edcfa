"""SEARCH evaluation (services/mailstore/search.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailstack.message.mime import parse_message
from mailstack.services.mailstore.search import (
    MessageFacts,
    body_text,
    matches,
    needs_body,
)
from mailstack.v1 import mailstore_pb2 as pb

from tests.unit.message.samples import SAMPLES, load

# 2024-03-14 00:30 in UTC+02:00 is still 2024-03-13 in UTC.
INTERNAL = datetime(2024, 3, 14, 0, 30, tzinfo=timezone(timedelta(hours=2)))


def facts(name: str, uid: int = 7, flags: tuple[str, ...] = ("\\Seen", "$Label1"), modseq: int = 42) -> MessageFacts:
    raw = load(name)
    parsed = parse_message(raw)
    return MessageFacts(
        uid=uid,
        modseq=modseq,
        flags=flags,
        internal_date=int(INTERNAL.timestamp()),
        tz_offset=120,
        size=len(raw),
        sent_date=parsed.sent_date,
        header=parsed.header,
    )


def check(key: pb.SearchKey, name: str = "alternative.eml", *, seq: int = 3, max_uid: int = 10, **kw: object) -> bool:
    msg = facts(name, **kw)  # type: ignore[arg-type]
    return matches(key, msg, seq, max_uid, load(name) if needs_body(key) else None)


def k(**fields: object) -> pb.SearchKey:
    return pb.SearchKey(**fields)  # type: ignore[arg-type]  # one field of any kind


def header(name: str, value: str = "") -> pb.SearchKey:
    return k(header=pb.HeaderKey(name=name, value=value))


def date(field: pb.DateField.ValueType, op: pb.DateOp.ValueType, day: str) -> pb.SearchKey:
    return k(date=pb.DateKey(field=field, op=op, date=day))


def uids(*ranges: tuple[int, int]) -> pb.UidSet:
    return pb.UidSet(ranges=[pb.UidRange(first=a, last=b) for a, b in ranges])


def and_(*keys: pb.SearchKey) -> pb.SearchKey:
    return pb.SearchKey(**{"and": pb.SearchKeys(keys=keys)})  # type: ignore[arg-type]  # a Python keyword


def or_(*keys: pb.SearchKey) -> pb.SearchKey:
    return pb.SearchKey(**{"or": pb.SearchKeys(keys=keys)})  # type: ignore[arg-type]  # a Python keyword


def not_(key: pb.SearchKey) -> pb.SearchKey:
    return pb.SearchKey(**{"not": key})  # type: ignore[arg-type]  # a Python keyword


def test_all_and_flags() -> None:
    assert check(k(all=True)) and check(k(all=False))  # the key is set either way
    assert check(k(flag_set="\\seen")) and check(k(flag_set="\\SEEN"))
    assert check(k(flag_set="$label1"))  # keywords too (RFC 3501 §9: case-insensitive)
    assert not check(k(flag_set="\\Flagged"))
    assert check(k(flag_unset="\\Deleted")) and not check(k(flag_unset="\\Seen"))


def test_uid_and_sequence_sets() -> None:
    assert check(k(uids=uids((5, 8))))
    assert check(k(uids=uids((8, 5))))  # 8:5 is 5:8
    assert not check(k(uids=uids((1, 6), (8, 9))))
    assert check(k(uids=uids((7, 0))))  # 7:*
    assert check(k(uids=uids((20, 0))), uid=10)  # 20:* holds the largest UID (RFC 3501 §9)
    assert not check(k(uids=uids((20, 0))), uid=9)
    assert check(k(uids=uids((0, 0))), uid=10) and not check(k(uids=uids((0, 0))))  # "*"
    assert not check(k(uids=pb.UidSet()))  # empty set: no message
    assert check(k(seqs=uids((3, 3)))) and not check(k(seqs=uids((1, 2))))
    assert check(k(seqs=uids((2, 0))))  # 2:* without the count: open upper bound
    msg = facts("simple.eml")
    assert matches(k(seqs=uids((9, 0))), msg, 3, 10, None, max_seq=3)  # 9:* holds the last message
    assert not matches(k(seqs=uids((9, 0))), msg, 2, 10, None, max_seq=3)


def test_size_and_modseq() -> None:
    size = len(load("alternative.eml"))
    assert check(k(larger=size - 1)) and not check(k(larger=size))
    assert check(k(smaller=size + 1)) and not check(k(smaller=size))
    assert check(k(modseq=42)) and check(k(modseq=1)) and not check(k(modseq=43))


def test_internal_date_uses_its_own_zone() -> None:
    # Internal date 2024-03-14 00:30 +02:00: the day is the 14th although UTC says the 13th.
    assert check(date(pb.DATE_INTERNAL, pb.DATE_ON, "2024-03-14"))
    assert not check(date(pb.DATE_INTERNAL, pb.DATE_ON, "2024-03-13"))
    assert check(date(pb.DATE_INTERNAL, pb.DATE_SINCE, "2024-03-14"))
    assert not check(date(pb.DATE_INTERNAL, pb.DATE_SINCE, "2024-03-15"))
    assert check(date(pb.DATE_INTERNAL, pb.DATE_BEFORE, "2024-03-15"))
    assert not check(date(pb.DATE_INTERNAL, pb.DATE_BEFORE, "2024-03-14"))


def test_sent_date_uses_the_senders_zone() -> None:
    # Date: Wed, 13 Mar 2024 23:45:00 -0400 is the 14th in UTC but was sent on the 13th.
    assert check(date(pb.DATE_SENT, pb.DATE_ON, "2024-03-13"))
    assert not check(date(pb.DATE_SENT, pb.DATE_ON, "2024-03-14"))
    assert check(date(pb.DATE_SENT, pb.DATE_BEFORE, "2024-03-14"))
    assert check(date(pb.DATE_SENT, pb.DATE_SINCE, "2024-03-13"))
    assert not check(date(pb.DATE_SENT, pb.DATE_SINCE, "2024-03-14"))
    # Without a usable Date: no SENT* key matches.
    for op in (pb.DATE_BEFORE, pb.DATE_ON, pb.DATE_SINCE):
        assert not check(date(pb.DATE_SENT, op, "2024-03-13"), "bare-lf.eml")


def test_header_keys_decode_encoded_words() -> None:
    assert check(header("Subject", "CAFÉ"))  # RFC 2047 decoded, case-insensitive
    assert check(header("subject", "é menu"))
    assert check(header("FROM", "zoe q. public"))
    assert check(header("to", "alice@example"))
    assert not check(header("cc", "alice"))
    assert check(header("Message-ID")) and not check(header("In-Reply-To"))  # empty value: present
    # Two encoded words in different charsets, folded: the space between them is dropped.
    assert check(header("Subject", "if you can read this you understand the example."), "groups-2047.eml")
    assert check(header("from", "André Pirard"), "groups-2047.eml")
    assert check(header("subject", "grüße aus köln"), "eight-bit-header.eml")  # raw UTF-8 headers
    assert not check(header("x-long", "first line"), "nested-rfc822.eml")  # an inner header, not ours
    assert check(header("subject", "fwd"), "nested-rfc822.eml")


def test_body_decodes_transfer_encoding_and_charset() -> None:
    assert check(k(body="CRÈME BRÛLÉE"))  # quoted-printable UTF-8 text part
    assert check(k(body="goes on and on."))  # soft line break removed
    assert check(k(body="cr&egrave;me"))  # the HTML alternative is searched as text
    assert not check(k(body="Café"))  # the subject is not body
    assert check(k(body="¡hola mundo!"), "bare-lf.eml")  # base64 text part
    assert check(k(body="schöne grüße"), "eight-bit-header.eml")
    assert check(k(body="report attached"), "mixed-attachment.eml")
    assert not check(k(body="JVBERi0"), "mixed-attachment.eml")  # attachments are not text
    assert not check(k(body="preamble"), "mixed-attachment.eml")
    # The encapsulated message's header and text parts are body of the outer message.
    assert check(k(body="erin@example.test"), "nested-rfc822.eml")
    assert check(k(body="<b>noon</b>"), "nested-rfc822.eml")
    assert check(k(body="tomorrow"), "simple.eml")


def test_text_is_header_or_body() -> None:
    assert check(k(text="café menu")) and check(k(text="brûlée")) and check(k(text="Message-ID"))
    assert not check(k(text="nowhere to be found"))


def test_nested_and_or_not() -> None:
    seen, flagged = k(flag_set="\\Seen"), k(flag_set="\\Flagged")
    assert check(and_(seen, header("subject", "menu"), not_(flagged)))
    assert not check(and_(seen, flagged))
    assert check(or_(flagged, and_(seen, k(body="brûlée"))))
    assert not check(or_(flagged, not_(seen)))
    assert check(not_(not_(seen)))
    assert check(and_()) and not check(or_())  # empty AND is true, empty OR is false
    assert check(or_(not_(and_(seen, k(larger=10**9))), flagged))


def test_needs_body() -> None:
    assert not needs_body(and_(k(flag_set="\\Seen"), or_(header("subject", "x"), not_(k(larger=1)))))
    assert needs_body(and_(k(flag_set="\\Seen"), or_(header("subject", "x"), not_(k(body="x")))))
    assert needs_body(not_(k(text="x")))
    assert not needs_body(pb.SearchKey())


def test_bad_keys_raise_value_error() -> None:
    msg = facts("simple.eml")
    with pytest.raises(ValueError):
        matches(pb.SearchKey(), msg, 1, 10, None)
    with pytest.raises(ValueError):
        matches(and_(k(all=True), pb.SearchKey()), msg, 1, 10, None)
    with pytest.raises(ValueError):
        matches(date(pb.DATE_INTERNAL, pb.DATE_ON, "14-Mar-2024"), msg, 1, 10, None)
    with pytest.raises(ValueError):
        matches(k(body="x"), msg, 1, 10, None)  # the caller must pass the body


_KEYS: st.SearchStrategy[pb.SearchKey] = st.deferred(
    lambda: st.one_of(
        st.builds(lambda s: k(body=s), st.text(max_size=5)),
        st.builds(lambda s: k(text=s), st.text(max_size=5)),
        st.builds(lambda n, v: header(n, v), st.sampled_from(["subject", "from", "x"]), st.text(max_size=5)),
        st.builds(lambda n: k(larger=n), st.integers(0, 5000)),
        st.builds(lambda ks: and_(*ks), st.lists(_KEYS, max_size=3)),
        st.builds(lambda ks: or_(*ks), st.lists(_KEYS, max_size=3)),
        st.builds(not_, _KEYS),
    )
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_KEYS, st.sampled_from(SAMPLES), st.binary(max_size=40), st.integers(0, 1000))
def test_matches_never_raises_on_odd_messages(key: pb.SearchKey, name: str, noise: bytes, where: int) -> None:
    raw = load(name)
    raw = raw[:where] + noise + raw[where:]
    parsed = parse_message(raw)
    msg = MessageFacts(1, 1, (), 0, 0, len(raw), parsed.sent_date, parsed.header)
    result = matches(key, msg, 1, 1, raw)
    assert isinstance(result, bool)
    assert isinstance(body_text(raw), str)


def test_address_keys_match_the_parsed_address() -> None:
    # RFC 3501 §6.4.4: FROM/TO/CC/BCC look at the envelope's address; comments and blanks inside
    # the addr-spec are not part of it (RFC 5322 §3.4.1); the raw field text matches as well
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg?= (boss) <joe (c)@ (c) example.org>\r\n"
        b"To: undisclosed: ;, user (c) @example.net\r\nSubject: s\r\n\r\nbody\r\n"
    )
    parsed = parse_message(raw)
    msg = MessageFacts(7, 1, (), 0, 0, len(raw), None, parsed.header)

    def found(name: str, value: str) -> bool:
        return matches(header(name, value), msg, 1, 7, None)

    assert found("from", "JOE@example.org") and found("from", "Jörg <joe@example.org>")
    assert found("from", "(boss)"), "the raw field text"
    assert found("to", "user@example.net") and not found("to", "undisclosed@"), "group markers are no address"
    assert not found("cc", "user@example.net") and not found("from", "joe@example.net")
    assert not found("subject", "joe@example.org"), "only address fields are parsed"


def test_within_save_date_and_blob_key_keys() -> None:
    # RFC 5032 OLDER/YOUNGER as unix-second bounds on the internal date; RFC 8514 SAVED* by the save
    # date's UTC day; RFC 8474 EMAILID as the blob key
    raw = load("alternative.eml")
    parsed = parse_message(raw)
    internal = int(INTERNAL.timestamp())
    saved = int(datetime(2025, 1, 2, 23, 30, tzinfo=UTC).timestamp())
    msg = MessageFacts(1, 1, (), internal, 120, len(raw), parsed.sent_date, parsed.header, saved, "blob-1")

    def hit(key: pb.SearchKey) -> bool:
        return matches(key, msg, 1, 1, None)

    assert hit(k(internal_before=internal + 1)) and not hit(k(internal_before=internal))
    assert hit(k(internal_since=internal)) and not hit(k(internal_since=internal + 1))
    on = pb.DateKey(field=pb.DATE_SAVED, op=pb.DATE_ON, date="2025-01-02")
    assert hit(pb.SearchKey(date=on))
    assert not hit(pb.SearchKey(date=pb.DateKey(field=pb.DATE_SAVED, op=pb.DATE_SINCE, date="2025-01-03")))
    assert hit(pb.SearchKey(date=pb.DateKey(field=pb.DATE_INTERNAL, op=pb.DATE_ON, date="2024-03-14")))
    assert hit(k(blob_key="blob-1")) and not hit(k(blob_key="blob-2"))
