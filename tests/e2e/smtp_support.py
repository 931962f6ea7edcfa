"""Shared pieces of the SMTP tests (no tests here): a running mailstore + SmtpServer, and a raw client.

The stack runs in the test's event loop; real clients (smtplib in a thread, swaks
and curl as processes) talk to it over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from mailstack.services.common.config import Settings
from mailstack.services.mailstore.server import MailstoreServer
from mailstack.services.smtp.server import SmtpServer
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import Client, fetch_body, running_mailstore, test_settings

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PASSWORD = "alice-secret-1"
BOB_PASSWORD = "bob-secret-1"
TRACE_HEADER = re.compile(rb"\A(?:Return-Path: [^\r\n]*\r\n)(?:Received: [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*)")


@dataclass
class SmtpStack:
    settings: Settings
    client: Client
    server: SmtpServer
    ports: dict[str, int]
    mailstore: MailstoreServer  # its core holds the login throttle (ADR 0011)

    @property
    def cafile(self) -> str:
        return self.settings.effective_tls_cert

    async def inbox(self, account: str = ALICE) -> list[bytes]:
        """Every message in the account's INBOX, in UID order."""
        request = pb.FetchMetadataRequest(account=account, mailbox="INBOX")
        metas = [m async for batch in self.client.store.FetchMetadata(request) for m in batch.messages]
        return [await fetch_body(self.client, account, "INBOX", m.uid) for m in metas]

    async def count(self, account: str = ALICE) -> int:
        status = await self.client.store.GetMailboxStatus(pb.MailboxStatusRequest(account=account, name="INBOX"))
        return int(status.messages)


def without_trace(stored: bytes) -> bytes:
    """The stored message minus the Return-Path and Received lines this service prepends."""
    match = TRACE_HEADER.match(stored)
    assert match, f"no trace headers at the top of {stored[:200]!r}"
    return stored[match.end() :]


@asynccontextmanager
async def smtp_stack(tmp_path: Path, **overrides: object) -> AsyncIterator[SmtpStack]:
    settings = test_settings(tmp_path / "data", smtp_port=0, submission_port=0, submissions_port=0, **overrides)
    async with running_mailstore(settings) as (mailstore, client):
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password=PASSWORD))
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=BOB, password=BOB_PASSWORD))
        server = SmtpServer(settings.replace(mailstore_addr=mailstore.address))
        await server.start()
        ports = {name: int(address.rsplit(":", 1)[1]) for name, address in server.listeners}
        try:
            yield SmtpStack(settings, client, server, ports, mailstore)
        finally:
            await server.stop(1.0)


class RawSmtp:
    """A line-level client for what real clients will not send (long lines, bare LF, drops)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawSmtp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self, wait: float = 10.0) -> str:
        """One (possibly multi-line) reply, lines joined with "\\n"."""
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), wait)
            if not line:
                raise ConnectionError(f"connection closed after {lines!r}")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> str:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def greet(self, helo: str = "client.test") -> str:
        greeting = await self.reply()
        assert greeting.startswith("220 "), greeting
        return await self.cmd(f"EHLO {helo}")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def require_tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/install_clients.sh (Debian package {name})"
    return path


async def run_tool(*args: str, limit: float = 60.0, stdin: bytes | None = None) -> tuple[int, str]:
    """Run a client program; (exit code, stdout+stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode("utf-8", "replace")
