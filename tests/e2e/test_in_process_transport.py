"""`mailstack serve` all-in-one as an operator runs it, on each transport (ADR 0039): by default its
frontends call the mailstore in-process, MAILSTACK_MAILSTORE_TRANSPORT=grpc makes them dial its gRPC
listener; mail goes in by SMTP and out by IMAP and POP3 either way, and the gRPC listener keeps
serving the CLI."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import smtplib
import time
from pathlib import Path

import pytest
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import open_client
from tests.fixtures.serve_process import Served, running_serve

pytestmark = pytest.mark.slow

USER, PASSWORD = "carol@example.test", "secret-Pass1"
IN_PROCESS = "calling the mailstore in-process"


async def create_account(served: Served, folder: Path) -> None:
    # Over the gRPC listener with the CLI's admin identity: it stays up in all-in-one mode.
    client = open_client(f"127.0.0.1:{served.ports['mailstore']}", folder / "data")
    try:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=USER, password=PASSWORD))
    finally:
        await client.channel.close(None)


def read_by_imap(served: Served, subject: str) -> bytes:
    deadline = time.monotonic() + 10
    with imaplib.IMAP4("127.0.0.1", served.ports["imap"]) as imap:
        imap.login(USER, PASSWORD)
        while True:
            imap.select("INBOX")
            _, found = imap.search(None, "SUBJECT", f'"{subject}"')
            if found[0] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert found[0], "the delivered message never showed in IMAP"
        _, data = imap.fetch(found[0].split()[0], "(BODY.PEEK[])")
        body = data[0]
        assert isinstance(body, tuple)
        return body[1]


@pytest.mark.parametrize("transport", ["auto", "grpc"])
def test_mail_flows_on_each_transport_and_the_log_says_which(tmp_path: Path, transport: str) -> None:
    extra = {"MAILSTACK_MAILSTORE_TRANSPORT": transport, "MAILSTACK_ALLOW_PLAINTEXT_AUTH": "true"}
    with running_serve(tmp_path, extra) as served:
        asyncio.run(create_account(served, tmp_path))
        subject = f"over {transport}"
        message = f"From: dave@remote.test\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\nhello {transport}\r\n"
        with smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=10) as smtp:
            smtp.sendmail("dave@remote.test", [USER], message.encode())
        assert f"hello {transport}".encode() in read_by_imap(served, subject)
        pop = poplib.POP3("127.0.0.1", served.ports["pop3"], timeout=10)
        try:
            pop.user(USER)
            pop.pass_(PASSWORD)
            assert pop.stat()[0] == 1
        finally:
            pop.quit()
        log = served.log()
    assert (IN_PROCESS in log) == (transport == "auto"), log[-3000:]
