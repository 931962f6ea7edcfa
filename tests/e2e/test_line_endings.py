"""Line endings (ADR 0020; issue 15 defect 12): a message that arrives with bare LF, by gRPC
Deliver (the SMTP/LMTP and Send path), gRPC Append (IMAP APPEND's path) or `mailstack import
maildir`, is stored with CRLF; POP3's STAT, LIST, RETR and TOP then announce exactly the octets they
send (RFC 1939 §5, §7), and the quota counts the stored form. The IMAP side is
tests/imap_scripts/defects/12-crlf.imap."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import Client, append, deliver, fetch_body, running_mailstore, settings_for
from tests.fixtures.pop3 import RawClient, port_of, running_pop3, unstuff

USER = "lines@example.test"
PASSWORD = "pw-lines-123"
DELIVERED = b"From: a@remote.test\nSubject: delivered\n\nline one\n.starts with a dot\nlast line\n"
APPENDED = b"From: b@remote.test\nSubject: appended\n\nfirst\r\nmixed\nends without a line end"
IMPORTED = b"From: c@remote.test\nSubject: imported\n\nfrom a maildir\n\nsecond paragraph\n"
SENT = [DELIVERED, APPENDED, IMPORTED]


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass
class Stack:
    client: Client
    pop3_port: int


def import_maildir(address: str, data_dir: str, root: Path) -> subprocess.CompletedProcess[str]:
    """`mailstack import maildir` as an operator runs it (its own process, the admin identity)."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "new" / "1600000000.M1P1.host").write_bytes(IMPORTED)
    return subprocess.run(
        [sys.executable, "-m", "mailstack", "--mailstore", address, "import", "maildir", str(root), USER, "--append"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MAILSTACK_DATA_DIR": str(data_dir)},
    )


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    settings = settings_for(tmp_path / "data", allow_plaintext_auth=True, pop3_auth_failure_delay_ms=0)
    async with running_mailstore(settings) as (mailstore, client):
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=USER, password=PASSWORD))
        await deliver(client, [USER], DELIVERED)
        await append(client, USER, "INBOX", APPENDED)
        done = await asyncio.to_thread(import_maildir, mailstore.address, settings.data_dir, tmp_path / "Maildir")
        assert done.returncode == 0, done.stderr
        async with running_pop3(settings.replace(mailstore_addr=mailstore.address)) as pop3:
            yield Stack(client, port_of(pop3, "POP3 (STLS)"))


async def test_stored_with_crlf_and_counted_so(stack: Stack) -> None:
    request = pb.FetchMetadataRequest(account=USER, mailbox="INBOX", fields=pb.MetadataFields(size=True))
    listed = [m async for r in stack.client.store.FetchMetadata(request) for m in r.messages]
    assert [m.size for m in listed] == [len(crlf(m)) for m in SENT], "RFC822.SIZE is the stored size"
    for m, sent in zip(listed, SENT, strict=True):
        assert await fetch_body(stack.client, USER, "INBOX", m.uid) == crlf(sent)
    quota = await stack.client.store.GetQuota(pb.GetQuotaRequest(account=USER))
    assert quota.used_bytes == sum(len(crlf(m)) for m in SENT), "the quota counts what is stored"


async def test_pop3_sizes_are_the_octets_sent(stack: Stack) -> None:
    pop = await RawClient.connect(stack.pop3_port)
    try:
        assert (await pop.login(USER, PASSWORD)).startswith(b"+OK")
        count, total = (await pop.cmd("STAT")).split()[1:3]
        status, listing = await pop.multi("LIST")
        sizes = [int(line.split()[1]) for line in listing.splitlines()]
        assert int(count) == len(SENT) and int(total) == sum(sizes)
        for n, sent in enumerate(SENT, 1):
            assert await pop.cmd(f"LIST {n}") == b"+OK %d %d\r\n" % (n, sizes[n - 1])
            status, body = await pop.multi(f"RETR {n}")
            data = unstuff(body)
            assert status == b"+OK %d octets\r\n" % sizes[n - 1]
            # RFC 1939 §3: a last line without a line end gets CRLF before "." (framing, not message)
            expected = crlf(sent) if sent.endswith(b"\n") else crlf(sent) + b"\r\n"
            assert data == expected and len(crlf(sent)) == sizes[n - 1], f"message {n}"
            status, top = await pop.multi(f"TOP {n} 1")
            header, _, rest = crlf(sent).partition(b"\r\n\r\n")
            assert unstuff(top) == header + b"\r\n\r\n" + rest.split(b"\r\n")[0] + b"\r\n", f"TOP {n} 1"
    finally:
        await pop.close()
