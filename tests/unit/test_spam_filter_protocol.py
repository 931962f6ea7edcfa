"""rspamd's protocol and the header edits of the spam filter (pure functions)."""

from __future__ import annotations

import json
import time

import pytest
from mailstack.services.smtp.rspamd_protocol import Envelope, ProtocolError, parse_head, parse_verdict, request
from mailstack.services.smtp.spam_filter import MAX_SYMBOLS_HEADER, spam_headers, with_subject, without_ours


def test_the_request_carries_the_envelope_without_control_characters() -> None:
    envelope = Envelope("a@b.test", ["c@d.test", "e@f.test"], "192.0.2.1", "evil\x00\x1b[31m.test", "Q1", "mx.test")
    head = request("127.0.0.1:11333", envelope, 42)
    assert head.startswith(b"POST /checkv2 HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 42\r\n" in head and b"Rcpt: c@d.test\r\nRcpt: e@f.test\r\n" in head
    assert b"Helo: evil[31m.test\r\n" in head  # a client's HELO cannot add a header line or escape codes


def test_the_verdict_is_parsed_and_bounded() -> None:
    body = json.dumps({"action": "add header", "score": 7.5, "required_score": 15,
                       "symbols": {"B": {"score": 1.0}, "A\r\nX-Evil: 1": {"score": -5.0}, "bad": "x"},
                       "messages": {"smtp_message": "go away"}}).encode()  # fmt: skip
    verdict = parse_verdict(body)
    assert verdict.action == "add header" and verdict.score == 7.5 and verdict.message == "go away"
    assert verdict.symbols == [("AX-Evil1", -5.0), ("B", 1.0)]  # by |score|; names cleaned


@pytest.mark.parametrize(
    "body", [b"[]", b"{}", b'{"action": "nope"}', b'{"action": "reject", "score": "high"}', b"\xff"]
)
def test_a_verdict_that_is_not_one_is_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_verdict(body)


def test_the_response_head() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n") == (200, 12)
    assert parse_head(b"HTTP/1.0 200 OK\r\n\r\n") == (200, None)
    for bad in (b"SMTP 220\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"):  # fmt: skip
        with pytest.raises(ProtocolError):
            parse_head(bad)


def test_the_symbols_header_is_folded_and_cut() -> None:
    verdict = parse_verdict(json.dumps({
        "action": "no action", "score": 1, "required_score": 15,
        "symbols": {f"SYMBOL_NUMBER_{i}": {"score": i / 100} for i in range(200)},
    }).encode())  # fmt: skip
    header = spam_headers(verdict)
    lines = header.split(b"\r\n")
    assert all(len(line) < 200 for line in lines)
    symbols = header[header.index(b"X-Spam-Symbols:") :]
    assert len(symbols) < MAX_SYMBOLS_HEADER + 200 and symbols.rstrip().endswith(b"...")
    assert b"X-Spam-Flag" not in header


def test_the_subject_is_replaced_with_its_folded_lines() -> None:
    message = b"From: a@b\r\nSubject: one\r\n two\r\nTo: c@d\r\n\r\nSubject: in the body\r\n"
    assert with_subject(message, "[SPAM] one two") == (
        b"From: a@b\r\nSubject: [SPAM] one two\r\nTo: c@d\r\n\r\nSubject: in the body\r\n"
    )


def test_a_subject_is_added_when_there_is_none_and_encoded_when_not_ascii() -> None:
    assert with_subject(b"From: a@b\r\n\r\nbody\r\n", "[SPAM]") == b"Subject: [SPAM]\r\nFrom: a@b\r\n\r\nbody\r\n"
    rewritten = with_subject(b"Subject: x\r\n\r\n", "[SPAM] Gr\u00fc\u00dfe\r\nBcc: victim@x")
    assert rewritten.startswith(b"Subject: =?utf-8?") and b"\r\nBcc:" not in rewritten


def test_a_senders_own_spam_fields_are_removed_with_their_folded_lines() -> None:
    message = (
        b"X-Spam-Flag: NO\r\nFrom: a@b\r\nX-Spam-Score: -50\r\n  / 15\r\nX-Spam-Status: theirs\r\n"
        b"x-spam-symbols: FAKE\r\nSubject: s\r\n\r\nX-Spam-Flag: NO in the body stays\r\n"
    )
    assert without_ours(message) == (
        b"From: a@b\r\nX-Spam-Status: theirs\r\nSubject: s\r\n\r\nX-Spam-Flag: NO in the body stays\r\n"
    )
    clean = b"From: a@b\r\n\r\nbody\r\n"
    assert without_ours(clean) is clean  # no copy when there is nothing to remove


def test_removing_many_forged_fields_is_linear() -> None:
    message = b"X-Spam-Flag: NO\r\n" * 50_000 + b"Subject: s\r\n\r\nbody\r\n"
    started = time.perf_counter()
    assert without_ours(message) == b"Subject: s\r\n\r\nbody\r\n"
    assert time.perf_counter() - started < 2.0
