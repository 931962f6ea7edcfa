"""The mailstore (its own OS process) stops: SMTP answers 451 4.3.0; after a restart the retry is delivered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mailstack.services.smtp.server import SmtpServer
from mailstack.v1 import mailstore_pb2 as pb

from tests.e2e.smtp_support import ALICE, PASSWORD, RawSmtp, without_trace
from tests.fixtures.mailstore import (
    MailstoreProcess,
    fetch_body,
    identity_settings,
    open_client,
    test_settings,
)

pytestmark = pytest.mark.slow

MESSAGE = b"From: x@remote.test\r\nSubject: retry me\r\n\r\nstill here\r\n"


async def attempt(port: int) -> str:
    """One whole transaction; the first reply that is not a success, or the final 250."""
    smtp = await RawSmtp.connect(port)
    try:
        await smtp.greet()
        for line in ("MAIL FROM:<x@remote.test>", f"RCPT TO:<{ALICE}>"):
            reply = await smtp.cmd(line)
            if not reply.startswith("250"):
                return reply
        reply = await smtp.cmd("DATA")
        if not reply.startswith("354"):
            return reply
        return await smtp.cmd(MESSAGE + b".")
    finally:
        await smtp.close()


async def test_mailstore_down_gives_451_and_retry_after_restart_succeeds(tmp_path: Path) -> None:
    proc = MailstoreProcess(tmp_path / "store")
    await asyncio.to_thread(proc.start)
    server = None
    try:
        client = open_client(proc.address, proc.data_dir, proc.send_address)
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password=PASSWORD))
        await client.channel.close()
        settings = test_settings(
            tmp_path / "smtp",
            smtp_port=0,
            submission_port=0,
            submissions_port=0,
            mailstore_addr=proc.address,
            **identity_settings(proc.data_dir, "smtp"),
        )
        server = SmtpServer(settings)
        await server.start()
        port = int(server.listeners[0][1].rsplit(":", 1)[1])

        # The mailstore goes away between RCPT and the end of DATA.
        smtp = await RawSmtp.connect(port)
        await smtp.greet()
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await smtp.cmd("DATA")).startswith("354")
        await asyncio.to_thread(proc.stop)
        assert (await smtp.cmd(MESSAGE + b".")).startswith("451 4.3.0")
        # While it is down, RCPT cannot be checked: 451 4.3.0 as well.
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("451 4.3.0")
        await smtp.close()

        # Restart on the same data and address; the sender retries as an MTA would (bounded).
        await asyncio.to_thread(proc.start)
        deadline = time.monotonic() + 30
        replies = []
        while time.monotonic() < deadline:
            reply = await attempt(port)
            replies.append(reply)
            if reply.startswith("250"):
                break
            assert reply.startswith("451 4.3.0"), reply  # only temporary failures while reconnecting
            await asyncio.sleep(0.5)
        assert replies[-1].startswith("250 2.0.0"), replies

        client = open_client(proc.address, proc.data_dir, proc.send_address)
        status = await client.store.GetMailboxStatus(pb.MailboxStatusRequest(account=ALICE, name="INBOX"))
        assert status.messages == 1  # the failed attempt stored nothing
        body = await fetch_body(client, ALICE, "INBOX", status.uidnext - 1)
        assert without_trace(body) == MESSAGE
        await client.channel.close()
    finally:
        if server is not None:
            await server.stop(1.0)
        await asyncio.to_thread(proc.stop)
