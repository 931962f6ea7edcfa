"""The spam filter hook against a real rspamd (tests/fixtures/rspamd_server.py): its actions,
the X-Spam-* headers, and failing open or closed when rspamd is stopped, hung or garbled."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import smtplib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mailstack.services.common.tls import client_ssl_context
from prometheus_client import REGISTRY

from tests.e2e.smtp_support import ALICE, BOB, BOB_PASSWORD, RawSmtp, SmtpStack, smtp_stack
from tests.fixtures.rspamd_server import RspamdServer

pytestmark = pytest.mark.slow

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def rspamd() -> Iterator[RspamdServer]:
    server = RspamdServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def message(subject: str = "hello", test: str = "", body: bytes = b"Lunch at noon?", extra: str = "") -> bytes:
    extra += f"X-Mx-Test: {test}\r\n" if test else ""
    return (
        (
            f"From: Bob <bob@remote.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n{extra}"
            "Message-ID: <m1@remote.test>\r\nDate: Mon, 07 Dec 2026 12:00:00 +0000\r\n\r\n"
        ).encode()
        + body
        + b"\r\n"
    )


async def send(port: int, data: bytes) -> str:
    smtp = await RawSmtp.connect(port)
    await smtp.greet("mail.remote.test")
    assert (await smtp.cmd("MAIL FROM:<bob@remote.test>")).startswith("250")
    assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
    assert (await smtp.cmd("DATA")).startswith("354")
    reply = await smtp.cmd(data + b".")
    await smtp.close()
    return reply


def parsed(stored: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(stored, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"mailstack_spam_filter_{name}_total", labels) or 0.0


@contextlib.asynccontextmanager
async def filtered(tmp_path: Path, url: str, **overrides: object) -> AsyncIterator[SmtpStack]:
    async with smtp_stack(tmp_path, spam_filter_url=url, **overrides) as stack:
        yield stack


async def test_gtube_is_rejected_and_nothing_stored(tmp_path: Path, rspamd: RspamdServer) -> None:
    before = metric("results", result="reject")
    async with filtered(tmp_path, rspamd.url) as stack:
        reply = await send(stack.ports["smtp"], message(body=GTUBE))
        assert reply.startswith("550 5.7.1"), reply
        assert await stack.count() == 0
    assert metric("results", result="reject") == before + 1


async def test_clean_mail_passes_with_its_score(tmp_path: Path, rspamd: RspamdServer) -> None:
    async with filtered(tmp_path, rspamd.url) as stack:
        forged = "X-Spam-Flag: YES\r\nX-Spam-Score: -50.00 / 15.00\r\n"  # a sender's own, removed
        assert (await send(stack.ports["smtp"], message(extra=forged))).startswith("250 2.0.0")
        stored = (await stack.inbox())[0]
        msg = parsed(stored)
        assert len(msg.get_all("X-Spam-Score") or []) == 1 and not str(msg["X-Spam-Score"]).startswith("-50")
        assert msg["X-Spam-Action"] == "no action"
        assert msg["X-Spam-Flag"] is None
        score, _, required = str(msg["X-Spam-Score"]).partition(" / ")
        assert float(score) < 15 and float(required) == 150.0  # the test instance's reject threshold
        assert "MIME_GOOD" in str(msg["X-Spam-Symbols"])
        assert msg["Subject"] == "hello"
        assert stored.endswith(b"\r\n\r\nLunch at noon?\r\n")  # the body is untouched


async def test_a_spammy_message_is_delivered_flagged(tmp_path: Path, rspamd: RspamdServer) -> None:
    async with filtered(tmp_path, rspamd.url) as stack:
        assert (await send(stack.ports["smtp"], message(test="spammy"))).startswith("250 2.0.0")
        stored = (await stack.inbox())[0]
        msg = parsed(stored)
        assert msg["X-Spam-Flag"] == "YES" and msg["X-Spam-Action"] == "add header"
        assert float(str(msg["X-Spam-Score"]).split(" / ")[0]) >= 100.0  # the add_header threshold
        symbols = str(msg["X-Spam-Symbols"])
        assert symbols.startswith("MX_TEST_SPAMMY(120.00)")  # the heaviest first
        # The fields sit below the trace fields and every line is bounded.
        assert stored.index(b"X-Spam-Flag") > stored.index(b"Received:")
        assert all(len(line) <= 998 for line in stored.split(b"\r\n"))


async def test_rewrite_subject_uses_the_subject_rspamd_returns(tmp_path: Path, rspamd: RspamdServer) -> None:
    async with filtered(tmp_path, rspamd.url) as stack:
        data = message(subject="Gr\u00fc\u00dfe, a long\r\n folded subject", test="rewrite")
        assert (await send(stack.ports["smtp"], data)).startswith("250 2.0.0")
        msg = parsed((await stack.inbox())[0])
        assert msg["Subject"] == "[SPAM] Gr\u00fc\u00dfe, a long folded subject"
        assert len(msg.get_all("Subject") or []) == 1
        assert msg["X-Spam-Flag"] == "YES" and msg["X-Spam-Action"] == "rewrite subject"


@pytest.mark.parametrize(("test", "reply"), [("soft", "451 4.7.1"), ("grey", "451 4.7.1")])
async def test_soft_reject_and_greylist_defer(tmp_path: Path, rspamd: RspamdServer, test: str, reply: str) -> None:
    async with filtered(tmp_path, rspamd.url) as stack:
        answer = await send(stack.ports["smtp"], message(test=test))
        assert answer.startswith(reply), answer
        assert await stack.count() == 0


async def test_submission_is_not_filtered(tmp_path: Path, rspamd: RspamdServer) -> None:
    """The hook is on the inbound MX only: an authenticated user's own mail is not scanned."""
    async with filtered(tmp_path, rspamd.url) as stack:
        data = f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: s\r\n\r\n".encode() + GTUBE + b"\r\n"

        def submit() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("localhost", stack.ports["submission"], timeout=30) as s:
                s.starttls(context=client_ssl_context(stack.cafile))
                s.login(BOB, BOB_PASSWORD)
                return s.sendmail(BOB, [ALICE], data)

        assert await asyncio.to_thread(submit) == {}
        assert b"X-Spam-" not in (await stack.inbox())[0]


async def test_fail_open_and_closed_when_rspamd_is_stopped(tmp_path: Path, rspamd: RspamdServer) -> None:
    rspamd.stop()
    try:
        errors, unfiltered, tempfail = (metric("errors", reason="connect"), metric("results", result="unfiltered"),
                                        metric("results", result="tempfail"))  # fmt: skip
        async with filtered(tmp_path / "open", rspamd.url, spam_filter_fail="open") as stack:
            assert (await send(stack.ports["smtp"], message(body=GTUBE))).startswith("250 2.0.0")
            msg = parsed((await stack.inbox())[0])
            assert msg["X-Spam-Checker"] == "unavailable, not filtered" and msg["X-Spam-Action"] is None
        async with filtered(tmp_path / "closed", rspamd.url, spam_filter_fail="closed") as stack:
            reply = await send(stack.ports["smtp"], message())
            assert reply.startswith("451 4.7.1"), reply
            assert await stack.count() == 0
        assert metric("errors", reason="connect") == errors + 2
        assert metric("results", result="unfiltered") == unfiltered + 1
        assert metric("results", result="tempfail") == tempfail + 1
    finally:
        rspamd.start()
    async with filtered(tmp_path / "back", rspamd.url, spam_filter_fail="closed") as stack:
        assert (await send(stack.ports["smtp"], message(body=GTUBE))).startswith("550 5.7.1")


@contextlib.asynccontextmanager
async def fake_rspamd(answer: bytes | None) -> AsyncIterator[str]:
    """A hostile or broken filter: reads the request, then sends `answer` (None: never answers)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)  # the whole message, as rspamd does, before answering
            if answer is None:
                await asyncio.sleep(60)
            writer.write(answer or b"")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (None, "timeout"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nnot json", "protocol"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 29\r\n\r\n" + b'{"action": "launch missiles"}', "protocol"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 90\r\n\r\n" + b'{"action": "reject"', "protocol"),  # cut short
        (b"HTTP/1.1 500 Internal\r\nContent-Length: 2\r\n\r\n{}", "protocol"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "protocol"),  # over MAX_BODY: not read
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000 + b"\r\n\r\n", "protocol"),  # an endless head
    ],
)
async def test_a_hung_or_garbled_filter_fails_closed_within_the_timeout(
    tmp_path: Path, answer: bytes | None, reason: str
) -> None:
    before = metric("errors", reason=reason)
    async with fake_rspamd(answer) as url:
        async with filtered(tmp_path, url, spam_filter_fail="closed", spam_filter_timeout_ms=500) as stack:
            started = asyncio.get_running_loop().time()
            reply = await send(stack.ports["smtp"], message())
            assert reply.startswith("451 4.7.1"), reply
            assert asyncio.get_running_loop().time() - started < 5
            assert await stack.count() == 0
    assert metric("errors", reason=reason) == before + 1
