"""The embedded default under attack: a mailstore with IMAP, POP3 and SMTP in one event loop (as
`mailstack serve` runs them), a JSON log of the `mailstack.auth` lines, and small raw clients that
can speak from another loopback address (127.0.0.2 is loopback too)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailstack.services.common.logs import JsonFormatter
from mailstack.services.imap.server import ImapServer
from mailstack.services.mailstore.server import MailstoreServer
from mailstack.services.pop3.server import Pop3Server
from mailstack.services.smtp.server import SmtpServer
from mailstack.v1 import mailstore_pb2 as pb
from prometheus_client import REGISTRY

from tests.fixtures.mailstore import Client, running_mailstore, settings_for

DOMAIN = "example.test"
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
PASSWORD = "alice-secret-1"
BOB_PASSWORD = "bob-secret-1"
WAIT = 10.0  # seconds any one reply may take

# Fast answers and many tries per connection: the shared throttle is what is under test.
FAST = {
    "allow_plaintext_auth": True,
    "imap_auth_failure_delay_ms": 0,
    "pop3_auth_failure_delay_ms": 0,
    "smtp_auth_failure_delay_ms": 0,
    "imap_auth_max_failures": 1000,
    "pop3_max_auth_failures": 1000,
}


@dataclass
class Stack:
    mailstore: MailstoreServer
    client: Client
    imap: ImapServer
    pop3: Pop3Server
    smtp: SmtpServer
    log_path: Path

    def port(self, server: ImapServer | Pop3Server | SmtpServer, name: str) -> int:
        return int(dict(server.listeners)[name].rsplit(":", 1)[1])

    @property
    def imap_port(self) -> int:
        return self.port(self.imap, "IMAP (STARTTLS)")

    @property
    def pop3_port(self) -> int:
        return self.port(self.pop3, "POP3 (STLS)")

    @property
    def submission_port(self) -> int:
        return self.port(self.smtp, "submission")

    def auth_lines(self) -> list[dict[str, Any]]:
        """The JSON lines the `mailstack.auth` logger wrote so far."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


@asynccontextmanager
async def frontends(tmp_path: Path, **overrides: object) -> AsyncIterator[Stack]:
    settings = settings_for(
        tmp_path / "data",
        imap_port=0,
        imaps_port=0,
        pop3_port=0,
        pop3s_port=0,
        smtp_port=0,
        submission_port=0,
        submissions_port=0,
        **{**FAST, **overrides},
    )
    log_path = tmp_path / "auth.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(JsonFormatter())
    auth_log = logging.getLogger("mailstack.auth")
    auth_log.addHandler(handler)
    auth_log.setLevel(logging.INFO)
    try:
        async with running_mailstore(settings) as (mailstore, client):
            await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password=PASSWORD))
            await client.admin.CreateAccount(pb.CreateAccountRequest(name=BOB, password=BOB_PASSWORD))
            connected = settings.replace(mailstore_addr=mailstore.address)
            imap, pop3, smtp = ImapServer(connected), Pop3Server(connected), SmtpServer(connected)
            for server in (imap, pop3, smtp):
                await server.start()
            try:
                yield Stack(mailstore, client, imap, pop3, smtp, log_path)
            finally:
                for server in (smtp, pop3, imap):
                    await server.stop(1.0)
    finally:
        auth_log.removeHandler(handler)
        auth_log.setLevel(logging.NOTSET)
        handler.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Line:
    """A raw line client over asyncio streams, from a chosen loopback source address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> Line:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def line(self, wait: float = WAIT) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), wait)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, text: str) -> bytes:
        await self.send(text.encode() + b"\r\n")
        return await self.line()

    async def until(self, prefix: bytes) -> bytes:
        """Lines up to the first that starts with prefix (an IMAP tag); that line."""
        for _ in range(100):
            line = await self.line()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r}")

    async def smtp_reply(self) -> bytes:
        """One SMTP reply, continuation lines skipped; its last line."""
        for _ in range(50):
            line = await self.line()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line
        raise AssertionError("endless SMTP reply")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def imap_login(port: int, user: str, password: str, source: str = "127.0.0.1") -> bytes:
    """One connection, one LOGIN; the tagged answer."""
    client = await Line.connect(port, source)
    try:
        await client.line()  # greeting
        await client.send(f'a LOGIN {user} "{password}"\r\n'.encode())
        return await client.until(b"a ")
    finally:
        await client.close()


async def pop3_login(port: int, user: str, password: str, source: str = "127.0.0.1") -> bytes:
    client = await Line.connect(port, source)
    try:
        await client.line()
        assert (await client.cmd(f"USER {user}")).startswith(b"+OK")
        return await client.cmd(f"PASS {password}")
    finally:
        await client.close()


async def smtp_auth(port: int, user: str, password: str, source: str = "127.0.0.1") -> bytes:
    client = await Line.connect(port, source)
    try:
        await client.smtp_reply()
        await client.send(b"EHLO attacker.test\r\n")
        await client.smtp_reply()
        await client.send(f"AUTH PLAIN {plain(user, password)}\r\n".encode())
        return await client.smtp_reply()
    finally:
        await client.close()
