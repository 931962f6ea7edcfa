"""Real clients deliver through mailstack's SMTP service; messages read back byte-exact via the mailstore."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest
from mailstack.services.common.tls import client_ssl_context

from tests.e2e.smtp_support import (
    ALICE,
    BOB,
    BOB_PASSWORD,
    PASSWORD,
    require_tool,
    run_tool,
    smtp_stack,
    without_trace,
)

pytestmark = pytest.mark.slow


def message(subject: str, sender: str = f"Alice <{ALICE}>") -> bytes:
    # 8-bit text and a leading dot exercise 8BITMIME and dot-transparency.
    # (On submission the From must be the login's own: issue 13.)
    return (
        f"From: {sender}\r\nTo: {BOB}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße aus dem Test.\r\n.leading dot\r\n..two dots\r\n\r\nlast line\r\n"
    ).encode()


async def test_swaks_and_curl_deliver_on_the_inbound_port(tmp_path: Path) -> None:
    swaks, curl = require_tool("swaks"), require_tool("curl")
    async with smtp_stack(tmp_path) as stack:
        port = stack.ports["smtp"]
        eml = tmp_path / "m.eml"
        # swaks ends the data with its own CRLF before the final ".": give it the message without its last one.
        eml.write_bytes(message("swaks inbound")[:-2])
        rc, out = await run_tool(
            swaks, "--server", f"127.0.0.1:{port}", "--helo", "client.test", "--from", "x@remote.test",
            "--to", BOB, "--data", f"@{eml}", "--timeout", "20",
        )  # fmt: skip
        assert rc == 0, out
        assert "<-  250 2.0.0 Ok: queued as" in out

        eml.write_bytes(message("curl inbound"))
        rc, out = await run_tool(
            curl, "-sS", "-v", "--url", f"smtp://127.0.0.1:{port}/client.test", "--mail-from", "x@remote.test",
            "--mail-rcpt", BOB, "--upload-file", str(eml), "--max-time", "30",
        )  # fmt: skip
        assert rc == 0, out
        assert "< 250 2.0.0 Ok: queued as" in out

        stored = await stack.inbox(BOB)
        assert [without_trace(m) for m in stored] == [message("swaks inbound"), message("curl inbound")]
        assert stored[0].startswith(b"Return-Path: <x@remote.test>\r\nReceived: from client.test ([127.0.0.1])")
        assert b"with ESMTP id" in stored[0]


async def test_swaks_and_curl_submit_with_tls_and_auth(tmp_path: Path) -> None:
    swaks, curl = require_tool("swaks"), require_tool("curl")
    async with smtp_stack(tmp_path) as stack:
        eml = tmp_path / "m.eml"
        eml.write_bytes(message("swaks submission")[:-2])  # swaks adds the last CRLF itself
        # STARTTLS + AUTH PLAIN with an initial response on 587.
        rc, out = await run_tool(
            swaks, "--server", f"127.0.0.1:{stack.ports['submission']}", "--tls", "--auth", "PLAIN",
            "--auth-user", ALICE, "--auth-password", PASSWORD, "--from", ALICE, "--to", BOB,
            "--data", f"@{eml}", "--timeout", "20",
        )  # fmt: skip
        assert rc == 0, out
        assert "=== TLS started with cipher" in out and "235 2.7.0 Authentication successful" in out
        # Implicit TLS + AUTH LOGIN on 465.
        eml.write_bytes(message("swaks submissions", BOB)[:-2])
        rc, out = await run_tool(
            swaks, "--server", f"127.0.0.1:{stack.ports['submissions']}", "--tlsc", "--auth", "LOGIN",
            "--auth-user", BOB, "--auth-password", BOB_PASSWORD, "--from", BOB, "--to", BOB,
            "--data", f"@{eml}", "--timeout", "20",
        )  # fmt: skip
        assert rc == 0, out
        # Wrong password: swaks exits 28 on a refused AUTH.
        rc, out = await run_tool(
            swaks, "--server", f"127.0.0.1:{stack.ports['submission']}", "--tls", "--auth", "PLAIN",
            "--auth-user", ALICE, "--auth-password", "wrong", "--from", ALICE, "--to", BOB, "--timeout", "20",
        )  # fmt: skip
        assert rc == 28 and "535 5.7.8" in out, out
        # curl sends AUTH PLAIN without an initial response and verifies the certificate for "localhost".
        eml.write_bytes(message("curl submission"))
        rc, out = await run_tool(
            curl, "-sS", "-v", "--url", f"smtp://localhost:{stack.ports['submission']}/client.test", "--ssl-reqd",
            "--cacert", stack.cafile, "--user", f"{ALICE}:{PASSWORD}", "--mail-from", ALICE, "--mail-rcpt", BOB,
            "--upload-file", str(eml), "--max-time", "30",
        )  # fmt: skip
        assert rc == 0, out
        assert "< 334 " in out and "< 235 2.7.0" in out
        # Without AUTH curl's RCPT is refused (exit 55).
        rc, out = await run_tool(
            curl, "-sS", "--url", f"smtp://127.0.0.1:{stack.ports['submission']}/client.test", "--mail-from", ALICE,
            "--mail-rcpt", BOB, "--upload-file", str(eml), "--max-time", "30",
        )  # fmt: skip
        assert rc == 55, out
        stored = await stack.inbox(BOB)
        assert [without_trace(m) for m in stored] == [
            message("swaks submission"),
            message("swaks submissions", BOB),
            message("curl submission"),
        ]
        assert b"with ESMTPSA id" in stored[0] and b"with ESMTPSA id" in stored[1]


async def test_smtplib_starttls_and_implicit_tls_submission(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        context = client_ssl_context(stack.cafile)

        def send() -> None:
            with smtplib.SMTP("localhost", stack.ports["submission"], timeout=30) as s:
                s.starttls(context=context)
                s.login(ALICE, PASSWORD)
                assert s.sendmail(ALICE, [BOB], message("smtplib 587")) == {}
            with smtplib.SMTP_SSL("localhost", stack.ports["submissions"], context=context, timeout=30) as s:
                s.login(BOB, BOB_PASSWORD)
                assert s.sendmail(BOB, [BOB, ALICE], message("smtplib 465", BOB)) == {}

        await asyncio.to_thread(send)
        inbox = [without_trace(m) for m in await stack.inbox(BOB)]
        assert inbox == [message("smtplib 587"), message("smtplib 465", BOB)]
        assert [without_trace(m) for m in await stack.inbox(ALICE)] == [message("smtplib 465", BOB)]
        # Two recipients: no "for <...>" clause that would reveal the other one.
        assert b"\tfor <" not in (await stack.inbox(ALICE))[0]


async def test_large_message_round_trip(tmp_path: Path) -> None:
    """A 3 MiB message crosses several Deliver chunks and reads back exactly."""
    async with smtp_stack(tmp_path) as stack:
        body = b"".join(b"%07d " % i + b"z" * 70 + b"\r\n" for i in range(40_000))
        data = b"Subject: big\r\n\r\n" + body

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=60) as s:
                assert s.sendmail("x@remote.test", [ALICE], data) == {}

        await asyncio.to_thread(send)
        assert [without_trace(m) for m in await stack.inbox()] == [data]
