"""Issue 13 §2, replayed: a client that resets its connection right after the final "." (and a
SIGKILL of SMTP under load) must never leave a listed message without its body; one broken
message must not stop a mailbox from serving the others; `mailstack fsck` finds and repairs it.

Real servers (mailstore, SMTP, IMAP, POP3) and real sockets; the CLI runs as its own process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from mailstack.services.common.config import Settings, env_name
from mailstack.services.common.internal_ca import ensure_data_identities
from mailstack.services.imap.server import ImapServer
from mailstack.services.pop3.server import Pop3Server
from mailstack.services.smtp.server import SmtpServer
from mailstack.storage.blob.file import FileBlobStore
from mailstack.v1 import mailstore_pb2 as pb

from tests.e2e.smtp_support import RawSmtp
from tests.fixtures.mailstore import (
    Client,
    MailstoreProcess,
    deliver,
    fetch_body,
    open_client,
    running_mailstore,
    settings_for,
)
from tests.fixtures.pop3 import RawClient, unstuff
from tests.fixtures.ports import free_port
from tests.fixtures.topology import Topology, running_topology, topology_client

ALICE = "alice@example.test"
PASSWORD = "alice-Secret-1"
RESETS = 60  # SMTP transactions reset after the final "." (the issue saw 4 broken in 60)
RESET_SECONDS = 60.0  # ...or this long, whichever ends first
SENDERS = 4  # parallel SMTP clients of the SIGKILL run
KILL_AFTER = 40  # acknowledged messages before the SIGKILL
LOAD_SECONDS = 60.0
_accounts = itertools.count(1)


def message(tag: str, account: str = ALICE, lines: int = 20) -> bytes:
    body = "".join(f"line {i} of {tag}\r\n" for i in range(lines))
    return f"From: s@remote.test\r\nTo: {account}\r\nSubject: {tag}\r\n\r\n{body}".encode()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not a FIN (a client that vanished)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    writer.close()  # marks the writer closed (the transport is gone already)


# ---------------------------------------------------------------- the setups


class Restartable(Protocol):
    """An SMTP service in its own OS process (SmtpProcess, or the topology's ServiceProcess)."""

    proc: subprocess.Popen[bytes] | None

    def kill(self) -> None: ...

    def start(self, timeout: float = ...) -> None: ...


@dataclass
class Stack:
    """Where the attack goes: the servers' ports, a mailstore client and the account attacked."""

    mailstore_addr: str
    client: Client
    smtp_port: int
    imap_port: int
    pop3_port: int
    account: str = ALICE
    data_dir: Path | None = None  # the embedded stack's folder (its blobs are files there)
    smtp: Restartable | None = None  # SMTP as its own process, for the SIGKILL


FRONTEND_TUNING: dict[str, object] = dict(
    smtp_port=0,
    submission_port=0,
    submissions_port=0,
    imap_port=0,
    imaps_port=0,
    pop3_port=0,
    pop3s_port=0,
    allow_plaintext_auth=True,
    imap_auth_failure_delay_ms=0,
    pop3_auth_failure_delay_ms=0,
    password_scrypt_log_n=10,
)


def _port(server: SmtpServer | ImapServer | Pop3Server) -> int:
    return int(server.listeners[0][1].rsplit(":", 1)[1])  # the plaintext listener comes first


@asynccontextmanager
async def frontends(settings: Settings, smtp: bool = True) -> AsyncIterator[tuple[int, int, int]]:
    """In-process SMTP (unless it runs as a process), IMAP and POP3: their ports (SMTP 0 if none)."""
    servers: list[SmtpServer | ImapServer | Pop3Server] = [ImapServer(settings), Pop3Server(settings)]
    if smtp:
        servers.insert(0, SmtpServer(settings))
    for server in servers:
        await server.start()
    try:
        ports = [_port(s) for s in servers]
        yield (ports[0], ports[1], ports[2]) if smtp else (0, ports[0], ports[1])
    finally:
        for server in servers:
            await server.stop(1.0)


@asynccontextmanager
async def embedded_stack(tmp_path: Path, **overrides: object) -> AsyncIterator[Stack]:
    """The mailstore and every frontend in this process (the embedded default)."""
    data_dir = tmp_path / "data"
    settings = settings_for(data_dir, **FRONTEND_TUNING, **overrides)
    async with running_mailstore(settings) as (mailstore, client):
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password=PASSWORD))
        async with frontends(settings.replace(mailstore_addr=mailstore.address)) as (smtp, imap, pop3):
            yield Stack(mailstore.address, client, smtp, imap, pop3, data_dir=data_dir)


@asynccontextmanager
async def process_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The mailstore and SMTP as OS processes of their own (SQLite, files); IMAP, POP3 here."""
    store = MailstoreProcess(tmp_path / "store")
    await asyncio.to_thread(store.start)
    smtp = SmtpProcess(tmp_path / "store", store.address)
    client = open_client(store.address, store.data_dir, store.send_address)
    try:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password=PASSWORD))
        await asyncio.to_thread(smtp.start)
        settings = settings_for(tmp_path / "frontends", **FRONTEND_TUNING).replace(mailstore_addr=store.address)
        settings = settings.replace(data_dir=str(store.data_dir))  # its identities, as a Secret would give them
        async with frontends(settings, smtp=False) as (_, imap, pop3):
            yield Stack(store.address, client, smtp.port, imap, pop3, smtp=smtp)
    finally:
        smtp.kill()
        await client.channel.close()
        await asyncio.to_thread(store.stop)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """The deployed topology (tests/fixtures/topology.py): Redis, SeaweedFS (S3 blobs), the
    mailstore, imap, smtp and pop3, each its own OS process."""
    folder = tmp_path_factory.mktemp("topology")
    with running_topology(folder) as topo:
        yield topo


@asynccontextmanager
async def topology_stack(topo: Topology) -> AsyncIterator[Stack]:
    topo.ensure_running()
    account = f"dropped{next(_accounts)}@example.test"
    client = topology_client(topo)
    try:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=account, password=PASSWORD))
        yield Stack(
            topo.mailstore_addr,
            client,
            topo.smtp.ports["smtp"],
            topo.imaps[0].ports["imap"],
            topo.pop3.ports["pop3"],
            account=account,
            smtp=topo.smtp,
        )
    finally:
        await client.channel.close()


def stack_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AbstractAsyncContextManager[Stack]:
    if kind == "embedded":
        return embedded_stack(tmp_path)
    if kind == "processes":
        return process_stack(tmp_path)
    return topology_stack(request.getfixturevalue("topology"))


# ---------------------------------------------------------------- small real clients


class Imap:
    """IMAP over a socket, literals read whole: enough to check FETCH and EXPUNGE exactly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def login(cls, port: int, account: str = ALICE) -> Imap:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        imap = cls(reader, writer)
        await imap.response()
        assert (await imap.command(f'LOGIN {account} "{PASSWORD}"'))[-1].startswith(b"T OK")
        return imap

    async def response(self) -> bytes:
        """One response line, with its literals ({n} and n bytes) inline."""
        out = b""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 30)
            assert line, f"connection closed after {out[:200]!r}"
            out += line
            size = re.search(rb"\{(\d+)\}\r\n$", line)
            if size is None:
                return out.rstrip(b"\r\n")
            out += await asyncio.wait_for(self.reader.readexactly(int(size.group(1))), 30)

    async def command(self, text: str) -> list[bytes]:
        self.writer.write(b"T " + text.encode() + b"\r\n")
        await self.writer.drain()
        lines = []
        while True:
            lines.append(await self.response())
            if lines[-1].startswith(b"T "):
                return lines

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def fetched_bodies(lines: list[bytes]) -> dict[int, bytes]:
    """{sequence number: BODY[] literal} of the untagged FETCH responses."""
    out = {}
    for line in lines:
        match = re.match(rb"\* (\d+) FETCH \(.*?BODY\[\] \{(\d+)\}\r\n", line, re.S)
        if match:
            start = match.end()
            out[int(match.group(1))] = line[start : start + int(match.group(2))]
    return out


async def listed(stack: Stack) -> list[pb.MessageMetadata]:
    request = pb.FetchMetadataRequest(account=stack.account, mailbox="INBOX", fields=pb.MetadataFields(envelope=True))
    return [m async for batch in stack.client.store.FetchMetadata(request) for m in batch.messages]


async def assert_every_listed_message_is_served(stack: Stack) -> list[pb.MessageMetadata]:
    """Every listed message reads back from the mailstore; IMAP FETCH 1:* BODY.PEEK[] answers OK
    with each one; POP3 RETRs each one. The listed messages."""
    metas = await listed(stack)
    missing = []
    for m in metas:
        try:
            await fetch_body(stack.client, stack.account, "INBOX", m.uid)
        except grpc.aio.AioRpcError as err:
            missing.append((m.uid, m.envelope.subject.decode(), err.code().name))
    assert missing == [], f"listed without a body: {missing}"
    imap = await Imap.login(stack.imap_port, stack.account)
    try:
        assert any(b"EXISTS" in line for line in await imap.command("EXAMINE INBOX"))
        if metas:
            lines = await imap.command("FETCH 1:* BODY.PEEK[]")
            assert lines[-1].startswith(b"T OK"), lines[-1]
            assert sorted(fetched_bodies(lines)) == list(range(1, len(metas) + 1))
    finally:
        await imap.close()
    pop3 = await RawClient.connect(stack.pop3_port)
    try:
        assert (await pop3.login(stack.account, PASSWORD)).startswith(b"+OK")
        count = int((await pop3.cmd("STAT")).split()[1])
        assert count == len(metas)
        for n in range(1, count + 1):
            status, body = await pop3.multi(f"RETR {n}")
            assert status.startswith(b"+OK") and unstuff(body), (n, status)
        await pop3.cmd("QUIT")
    finally:
        await pop3.close()
    return metas


async def assert_no_broken_rows(stack: Stack) -> None:
    integrity = await stack.client.admin.CheckIntegrity(
        pb.CheckIntegrityRequest(account=stack.account, min_age_seconds=3600)
    )
    assert list(integrity.broken) == []


# ---------------------------------------------------------------- resets after the final "."


async def send_one(port: int, data: bytes, rcpt: str, drop: bool, delay: float = 0.0) -> bool:
    """One SMTP transaction; True when it got 250 after the final ".". A dropping client resets
    the connection `delay` seconds after its final "." and never reads the reply."""
    try:
        smtp = await RawSmtp.connect(port)
        try:
            await smtp.greet()
            for line in ("MAIL FROM:<s@remote.test>", f"RCPT TO:<{rcpt}>", "DATA"):
                if (await smtp.cmd(line))[:3] not in ("250", "354"):
                    return False
            await smtp.send(data + b".\r\n")
            if drop:
                await asyncio.sleep(delay)
                reset(smtp.writer)
                return False
            return (await smtp.reply()).startswith("250")
        finally:
            await smtp.close()  # after a reset: marks the writer closed, nothing more
    except (TimeoutError, ConnectionError, OSError):
        return False


@pytest.mark.parametrize("kind", ["embedded", pytest.param("topology", marks=pytest.mark.slow)])
async def test_reset_after_final_dot_never_lists_a_message_without_its_body(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with stack_for(kind, tmp_path, request) as stack:
        deadline = time.monotonic() + RESET_SECONDS
        tries = 0
        while tries < RESETS and time.monotonic() < deadline:
            # The reset lands at different points of the store: before, during and after the commit.
            tag = f"reset-{tries}"
            await send_one(stack.smtp_port, message(tag, stack.account), stack.account, True, (tries % 6) * 0.002)
            tries += 1
        await asyncio.sleep(1.0)  # deliveries whose client is gone finish (the commit is waited for)
        assert tries >= 20, f"only {tries} transactions in {RESET_SECONDS} s"
        await assert_every_listed_message_is_served(stack)
        await assert_no_broken_rows(stack)


# ---------------------------------------------------------------- one broken message; fsck


async def run_fsck(stack: Stack, *args: str) -> tuple[int, dict[str, Any]]:
    """The real CLI, as an operator runs it, against the running mailstore."""
    assert stack.data_dir is not None
    command = [sys.executable, "-m", "mailstack", "fsck", "--json", "--mailstore", stack.mailstore_addr]
    env = {**os.environ, env_name("data_dir"): str(stack.data_dir)}  # where the CLI finds its admin identity
    done = await asyncio.to_thread(subprocess.run, [*command, *args], capture_output=True, timeout=120, env=env)
    return done.returncode, json.loads(done.stdout)


async def test_a_broken_message_does_not_break_its_mailbox_and_fsck_repairs_it(tmp_path: Path) -> None:
    # Bodies as files: a body kept in the database (ADR 0045) goes and comes with its row.
    async with embedded_stack(tmp_path, kept_body_bytes=0) as stack:
        assert stack.data_dir is not None
        keys = []
        for n in range(1, 4):
            reply = await deliver(stack.client, [ALICE], message(f"m{n}"))
            assert reply.results[0].status == pb.RECIPIENT_LOCAL
            keys.append(reply.message_id)
        metas = await listed(stack)
        blobs = FileBlobStore(str(stack.data_dir / "blobs"))
        os.unlink(blobs._path_of(keys[1]))  # the state issue 13 found: a row without its body
        orphan = "0000000000000000-0rphan"
        await blobs.put(orphan, b"a body nobody lists")
        old = time.time() - 7200
        os.utime(blobs._path_of(orphan), (old, old))

        watcher = await Imap.login(stack.imap_port)  # a session that must learn of the repair
        assert any(b"3 EXISTS" in line for line in await watcher.command("SELECT INBOX"))
        imap = await Imap.login(stack.imap_port)
        await imap.command("EXAMINE INBOX")
        lines = await imap.command("FETCH 1:* BODY.PEEK[]")
        # RFC 9051 §7.1: the others are sent, the broken one is reported with NO [SERVERBUG].
        assert sorted(fetched_bodies(lines)) == [1, 3]
        assert fetched_bodies(lines)[3] == message("m3")
        assert lines[-1].startswith(b"T NO [SERVERBUG]"), lines[-1]
        # One at a time as a client downloads them (the second from the session's read-ahead).
        for n, status in ((1, b"T OK"), (2, b"T NO [SERVERBUG]"), (3, b"T OK")):
            lines = await imap.command(f"FETCH {n} BODY.PEEK[]")
            assert lines[-1].startswith(status), (n, lines[-1])
        assert fetched_bodies(lines)[3] == message("m3")
        await imap.close()

        pop3 = await RawClient.connect(stack.pop3_port)
        assert (await pop3.login(ALICE, PASSWORD)).startswith(b"+OK")
        for n, expected in ((1, b"+OK"), (2, b"-ERR"), (3, b"+OK"), (1, b"+OK")):
            status, body = await pop3.multi(f"RETR {n}")
            assert status.startswith(expected), (n, status)
            if expected == b"+OK":
                assert unstuff(body) == message(f"m{n}")
        await pop3.cmd("QUIT")
        await pop3.close()

        code, report = await run_fsck(stack)
        assert code == 1
        assert [(b["mailbox"], b["uid"]) for b in report["messages_without_body"]] == [("INBOX", metas[1].uid)]
        assert report["bodies_without_message"] == [orphan]
        assert report["repaired"] is False

        code, report = await run_fsck(stack, "--repair")
        assert code == 1 and report["repaired"] is True
        # The selected session is told at its next command (RFC 9051 §7.5.1), as of any expunge.
        lines = await watcher.command("NOOP")
        assert b"* 2 EXPUNGE" in lines, lines
        await watcher.close()
        assert not await blobs.exists(orphan)
        assert [m.uid for m in await listed(stack)] == [metas[0].uid, metas[2].uid]
        account = await stack.client.admin.GetAccount(pb.GetAccountRequest(name=ALICE))
        assert account.used_messages == 2  # the quota let go of the expunged message

        code, report = await run_fsck(stack)
        assert code == 0 and report["messages_without_body"] == [] and report["bodies_without_message"] == []
        assert len(await assert_every_listed_message_is_served(stack)) == 2


async def test_fsck_says_when_the_mailstore_is_unreachable(tmp_path: Path) -> None:
    ensure_data_identities(tmp_path)  # an admin identity, so that what fails is the connection
    command = [sys.executable, "-m", "mailstack", "fsck", "--mailstore", f"127.0.0.1:{free_port()}"]
    env = {**os.environ, env_name("data_dir"): str(tmp_path)}
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, timeout=60, env=env)
    assert done.returncode == 3 and b"not reachable" in done.stderr


# ---------------------------------------------------------------- SIGKILL of SMTP under load


class SmtpProcess:
    """`mailstack serve smtp` as its own OS process."""

    def __init__(self, data_dir: Path, mailstore_addr: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            env_name("data_dir"): str(data_dir),
            env_name("mailstore_addr"): mailstore_addr,
            env_name("smtp_port"): str(self.port),
            env_name("submission_port"): str(free_port()),
            env_name("submissions_port"): str(free_port()),
            env_name("lmtp_port"): "0",
        }
        self.log_path = data_dir / "smtp.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailstack", "serve", "smtp"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"smtp did not start:\n{self.log_path.read_text(errors='replace')}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["processes", "topology"])
async def test_sigkill_of_smtp_under_load_loses_nothing_acknowledged(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with stack_for(kind, tmp_path, request) as stack:
        smtp = stack.smtp
        assert smtp is not None
        acked: set[str] = set()
        enough = asyncio.Event()
        deadline = time.monotonic() + LOAD_SECONDS

        async def sender(s: int) -> None:
            for n in range(1000):
                if time.monotonic() > deadline or (enough.is_set() and smtp.proc and smtp.proc.poll() is not None):
                    return
                tag = f"load-{s}-{n}"
                # Every other client resets after its final "." at a different point of the store.
                data = message(tag, stack.account)
                if await send_one(stack.smtp_port, data, stack.account, n % 2 == 1, (n % 5) * 0.002):
                    acked.add(tag)
                    if len(acked) >= KILL_AFTER:
                        enough.set()

        senders = [asyncio.create_task(sender(s)) for s in range(SENDERS)]
        await asyncio.wait_for(enough.wait(), LOAD_SECONDS)
        smtp.kill()  # SIGKILL mid-load: transactions in every state are cut
        await asyncio.gather(*senders)
        await asyncio.to_thread(smtp.start)  # restarted, it takes mail again
        assert await send_one(stack.smtp_port, message("after-restart", stack.account), stack.account, False)
        acked.add("after-restart")
        await asyncio.sleep(1.0)  # stores whose SMTP side died finish in the mailstore

        metas = await assert_every_listed_message_is_served(stack)
        stored = {m.envelope.subject.decode(): m.uid for m in metas}
        lost = sorted(tag for tag in acked if tag not in stored)
        assert lost == [], f"acknowledged and lost: {lost}"
        for subject, uid in stored.items():
            body = await fetch_body(stack.client, stack.account, "INBOX", uid)
            assert body.endswith(message(subject, stack.account)), f"{subject}: {body[:100]!r}"
        await assert_no_broken_rows(stack)
        assert len(acked) > KILL_AFTER
