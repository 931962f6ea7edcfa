"""Shared pieces of the outbound tests (no tests here): a scripted remote MX (aiosmtpd on 127.0.0.1),
a mailstore with a Send token, an outbound worker, a Send client, and IMAP reading."""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from mailstack.services.common.config import Settings
from mailstack.services.imap.server import ImapServer
from mailstack.services.mailstore.server import MailstoreServer
from mailstack.services.outbound.server import OutboundWorker
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg

from tests.fixtures.mailstore import Client, running_mailstore, settings_for
from tests.fixtures.ports import free_port

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
PASSWORD = "alice-secret-1"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class ScriptedMx:
    """A remote MX: answers DATA from `replies` in turn (then 250), records what it accepted."""

    replies: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    data_attempts: int = 0
    in_data: int = 0
    max_in_data: int = 0
    hold: threading.Event | None = None  # set: DATA waits for it (a delivery in flight)
    entered_data: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.data_attempts += 1
            reply = self.replies.pop(0) if self.replies else "250 2.0.0 accepted"
            self.in_data += 1
            self.max_in_data = max(self.max_in_data, self.in_data)
        self.entered_data.set()
        try:
            if self.hold is not None:
                await asyncio.to_thread(self.hold.wait, 20)
            await asyncio.sleep(0.02)  # long enough for two workers to overlap, if they could
            if reply.startswith("250"):
                content = envelope.original_content or b""
                with self.lock:
                    self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content))
            return reply
        finally:
            with self.lock:
                self.in_data -= 1


@asynccontextmanager
async def scripted_mx(mx: ScriptedMx) -> AsyncIterator[int]:
    port = free_port()
    controller = Controller(mx, hostname="127.0.0.1", port=port, server_hostname="mx.remote.test")
    await asyncio.to_thread(controller.start)
    try:
        yield port
    finally:
        await asyncio.to_thread(controller.stop)


@dataclass
class OutboundStack:
    settings: Settings
    mailstore: MailstoreServer
    client: Client
    token: str
    sender: spbg.SenderAsyncStub
    admin: spbg.SendAdminAsyncStub
    workers: list[OutboundWorker] = field(default_factory=list)

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def start_worker(self, **overrides: object) -> OutboundWorker:
        worker = OutboundWorker(self.settings.replace(mailstore_addr=self.mailstore.address, **overrides))
        await worker.start()
        self.workers.append(worker)
        return worker

    async def send(self, header: spb.SendHeader, raw: bytes = b"", token: str | None = None) -> spb.SendResponse:
        requests = [spb.SendRequest(header=header)]
        requests += [spb.SendRequest(chunk=raw[i : i + (1 << 20)]) for i in range(0, len(raw), 1 << 20)]
        auth = self.auth if token is None else ((("authorization", f"Bearer {token}"),) if token else ())
        return await self.sender.Send(iter(requests), metadata=auth)

    async def status(self, message_id: str) -> spb.SendStatus:
        request = spb.GetSendStatusRequest(message_id=message_id)
        return await self.sender.GetSendStatus(request, metadata=self.auth)

    async def wait_for(self, predicate: Callable[[], bool], limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while not predicate():
            assert time.monotonic() < deadline, "timed out waiting"
            await asyncio.sleep(0.05)

    async def wait_status(
        self, message_id: str, done: Callable[[spb.SendStatus], bool], limit: float = 20.0
    ) -> spb.SendStatus:
        deadline = time.monotonic() + limit
        while True:
            status = await self.status(message_id)
            if done(status):
                return status
            assert time.monotonic() < deadline, f"timed out; last status {status}"
            await asyncio.sleep(0.05)


def structured(sender: str, to: list[str], subject: str = "Hello", **fields: object) -> spb.StructuredMessage:
    message = spb.StructuredMessage(to=to, subject=subject, **fields)  # type: ignore[arg-type]
    setattr(message, "from", sender)  # "from" is a Python keyword
    return message


@asynccontextmanager
async def outbound_stack(
    tmp_path: Path, routes: dict[str, int], from_domains: tuple[str, ...] = (DOMAIN,), **overrides: object
) -> AsyncIterator[OutboundStack]:
    resolver = "static:" + ",".join(f"{d}=127.0.0.1:{p}" for d, p in routes.items())
    defaults: dict[str, object] = {
        "outbound_resolver": resolver,
        "outbound_retry_schedule": "0.3",  # seconds: retries come at once in tests
        "outbound_poll_ms": 50,
        "outbound_connect_timeout": 10,
        "imap_port": 0,
        "imaps_port": 0,
        "allow_plaintext_auth": True,
    }
    settings = settings_for(tmp_path / "data", **{**defaults, **overrides})
    async with running_mailstore(settings) as (mailstore, client):
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password=PASSWORD))
        admin = cast("spbg.SendAdminAsyncStub", spbg.SendAdminStub(client.channel))  # type: ignore[call-overload]
        token = await admin.CreateToken(spb.CreateTokenRequest(name="shop", from_domains=list(from_domains)))
        sender = cast("spbg.SenderAsyncStub", spbg.SenderStub(client.channel))  # type: ignore[call-overload]
        stack = OutboundStack(settings, mailstore, client, token.secret, sender, admin)
        try:
            yield stack
        finally:
            for worker in stack.workers:
                await worker.stop(1.0)


@asynccontextmanager
async def running_imap(stack: OutboundStack) -> AsyncIterator[int]:
    server = ImapServer(stack.settings.replace(mailstore_addr=stack.mailstore.address))
    await server.start()
    try:
        yield int(server.listeners[0][1].rsplit(":", 1)[1])
    finally:
        await server.stop(1.0)


def imap_fetch_all(port: int, user: str, password: str, mailbox: str = "INBOX") -> list[bytes]:
    """Every message of the mailbox over IMAP (blocking imaplib; run it in a thread)."""
    with imaplib.IMAP4("127.0.0.1", port, timeout=20) as imap:
        imap.login(user, password)
        imap.select(mailbox, readonly=True)
        _, data = imap.uid("SEARCH", "ALL")
        out = []
        for uid in data[0].split():
            _, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            item = parts[0]
            assert isinstance(item, tuple)
            out.append(item[1])
        return out
