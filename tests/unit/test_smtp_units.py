"""Pure parts of the SMTP service: replies, limits, the DATA reader, trace headers, the DATA verdict,
the recipient cache."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from mailstack.services.common.connection_limits import ConnectionLimiter
from mailstack.services.smtp import replies
from mailstack.services.smtp.data import DataProblem, read_data
from mailstack.services.smtp.handler import SmtpHandler
from mailstack.services.smtp.received import trace_headers, with_protocol
from mailstack.services.smtp.recipient_cache import RecipientCache
from mailstack.v1 import mailstore_pb2 as pb

# ---------------------------------------------------------------- replies


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
        ("500 Command line too long", replies.LINE_TOO_LONG),
        ('500 Error: command "FOO" not recognized', '500 5.5.2 Error: command "FOO" not recognized'),
        ("552 Error: message size exceeds fixed maximum message size", replies.TOO_BIG),
        ("221 Bye", "221 2.0.0 Bye"),
        ("250 2.1.5 Recipient OK", "250 2.1.5 Recipient OK"),  # already enhanced
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("334 ", "334 "),
        ("250-PIPELINING", "250-PIPELINING"),
        ("538 5.7.11 Encryption required", "538 5.7.11 Encryption required"),
        ("599 odd", "599 5.0.0 odd"),
    ],
)
def test_enhance(raw: str, expected: str) -> None:
    assert replies.enhance(raw) == expected


# ---------------------------------------------------------------- limits


def test_connection_limiter_total_and_per_ip() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_ip=2)
    assert limiter.acquire("a") and limiter.acquire("a")
    assert not limiter.acquire("a")  # per IP
    assert limiter.acquire("b")
    assert not limiter.acquire("c")  # total
    limiter.release("a")
    assert limiter.count("a") == 1
    assert limiter.acquire("c")
    for ip in ("a", "b", "c"):
        limiter.release(ip)
    assert limiter.total == 0 and limiter.count("a") == 0


def test_connection_limiter_zero_means_unlimited() -> None:
    limiter = ConnectionLimiter(max_total=0, max_per_ip=0)
    assert all(limiter.acquire("a") for _ in range(1000))


# ---------------------------------------------------------------- DATA reader


async def read(wire: bytes, max_size: int = 0) -> tuple[bytes, DataProblem | None, bytes]:
    """(content, problem, what is left in the stream after the DATA section)."""
    reader = asyncio.StreamReader(limit=1001)
    reader.feed_data(wire)
    reader.feed_eof()
    result = await read_data(reader, max_size, lambda: None)
    return result.content, result.problem, await reader.read()


async def test_data_dot_unstuffing_and_rest_of_stream() -> None:
    content, problem, rest = await read(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    assert (content, problem, rest) == (b"Subject: x\r\n\r\n.dot\r\n", None, b"QUIT\r\n")


async def test_data_line_length_limit() -> None:
    ok = b"a" * 998 + b"\r\n"
    assert (await read(ok + b".\r\n"))[:2] == (ok, None)
    assert (await read(b"." + ok + b".\r\n"))[:2] == (ok, None)  # the transparency dot does not count
    assert (await read(b"a" * 999 + b"\r\n.\r\n"))[1] == DataProblem.LINE_TOO_LONG
    content, problem, rest = await read(b"b" * 50_000 + b"\r\nnext\r\n.\r\nNOOP\r\n")
    assert (content, problem, rest) == (b"", DataProblem.LINE_TOO_LONG, b"NOOP\r\n")


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\r"])
async def test_data_bare_newlines_do_not_end_data_and_are_refused(smuggle: bytes) -> None:
    wire = b"Subject: x\r\n\r\nhi" + smuggle + b"MAIL FROM:<evil@x>\r\n.\r\nNOOP\r\n"
    content, problem, rest = await read(wire)
    assert (content, problem, rest) == (b"", DataProblem.BARE_NEWLINE, b"NOOP\r\n")


async def test_data_size_limit() -> None:
    assert (await read(b"12345678\r\n.\r\n", max_size=10))[:2] == (b"12345678\r\n", None)
    assert (await read(b"12345678\r\n1\r\n.\r\n", max_size=10))[1] == DataProblem.TOO_BIG


async def test_data_eof_midway_raises() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await read(b"Subject: cut\r\n\r\npartial")


# ---------------------------------------------------------------- trace headers


def test_trace_headers() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    header = trace_headers(
        sender="a@x.test",
        helo="client.test",
        client_ip="192.0.2.1",
        hostname="mx.example.test",
        protocol=with_protocol(True, True, True),
        queue_id="Q1",
        recipients=["b@example.test"],
        now=when,
    )
    assert header == (
        b"Return-Path: <a@x.test>\r\n"
        b"Received: from client.test ([192.0.2.1])\r\n"
        b"\tby mx.example.test (mailstack) with ESMTPSA id Q1\r\n"
        b"\tfor <b@example.test>;\r\n"
        b"\tFri, 02 Jan 2026 03:04:05 +0000\r\n"
    )


def test_trace_headers_cannot_be_injected_into() -> None:
    header = trace_headers(
        sender="a@x\r\nBcc: evil",
        helo="h\r\nX-Evil: 1",
        client_ip="::1",
        hostname="mx",
        protocol="SMTP",
        queue_id="Q",
        recipients=["a@b", "c@d"],
    )
    assert b"\r\nX-Evil" not in header and b"\r\nBcc" not in header
    assert b"for <" not in header  # several recipients: none disclosed
    assert with_protocol(False, False, False) == "SMTP" and with_protocol(True, False, False) == "ESMTP"


# ---------------------------------------------------------------- the DATA verdict


def results(*statuses: pb.RecipientStatus.ValueType) -> list[pb.RecipientResult]:
    return [pb.RecipientResult(recipient=f"r{i}@x", status=s) for i, s in enumerate(statuses)]


def test_data_reply_for_per_recipient_results() -> None:
    verdict = SmtpHandler._data_reply
    assert verdict("Q", results(pb.RECIPIENT_LOCAL, pb.RECIPIENT_LOCAL))[0] == replies.queued("Q")
    # Nothing stored, all permanent: the permanent code.
    assert verdict("Q", results(pb.RECIPIENT_UNKNOWN))[0] == replies.RECIPIENT_UNKNOWN
    assert verdict("Q", results(pb.RECIPIENT_TOO_BIG_FOR_QUOTA))[0] == replies.TOO_BIG_FOR_MAILBOX
    assert verdict("Q", results(pb.RECIPIENT_OVER_QUOTA))[0] == replies.MAILBOX_FULL
    # Some stored, some not: never 250 (that would lose mail), a temporary failure instead.
    assert verdict("Q", results(pb.RECIPIENT_LOCAL, pb.RECIPIENT_UNKNOWN))[0] == replies.TEMP_FAILURE
    assert verdict("Q", results(pb.RECIPIENT_LOCAL, pb.RECIPIENT_TEMP_FAILURE))[0] == replies.TEMP_FAILURE
    assert verdict("Q", [])[0] == replies.TEMP_FAILURE


# ---------------------------------------------------------------- the recipient cache


def test_recipient_cache_expires_and_respects_size() -> None:
    now = [100.0]
    cache = RecipientCache(ttl=5.0, max_entries=10, clock=lambda: now[0])
    assert not cache.is_local("a@x", 0)
    cache.remember_local("a@x", 1000)
    assert cache.is_local("a@x", 0) and cache.is_local("a@x", 1000)
    assert not cache.is_local("a@x", 1001)  # a bigger message may not fit: ask the mailstore
    now[0] += 5.0
    assert not cache.is_local("a@x", 0) and len(cache) == 0
    cache.remember_local("a@x", 0)
    cache.forget("a@x")
    assert not cache.is_local("a@x", 0)
    cache.remember_local("a@x", 0)
    cache.remember_local("b@x", 0)
    cache.clear()  # after a failed Deliver
    assert len(cache) == 0


def test_recipient_cache_is_bounded_oldest_out() -> None:
    cache = RecipientCache(ttl=60.0, max_entries=3)
    for name in ("a", "b", "c"):
        cache.remember_local(name, 0)
    cache.remember_local("a", 0)  # refreshed: now the youngest
    cache.remember_local("d", 0)
    assert len(cache) == 3
    assert not cache.is_local("b", 0)
    assert all(cache.is_local(name, 0) for name in ("a", "c", "d"))
    off = RecipientCache(max_entries=0)
    off.remember_local("a", 0)
    assert not off.is_local("a", 0) and len(off) == 0
