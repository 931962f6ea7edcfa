"""Several pop3 processes on one host share their ports (MAILSTACK_REUSE_PORT, SO_REUSEPORT): the
kernel spreads new clients over them, and when one dies the others keep serving on the same port."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import MailstoreProcess, deliver, identity_env, open_client
from tests.fixtures.pop3 import Pop3Process, RawClient
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

USER = "shared@example.test"
PASSWORD = "pw-123456"


ESTABLISHED, LISTEN = "01", "0A"  # states in /proc/net/tcp


def sockets_on(pid: int, port: int, state: str) -> int:
    """Sockets of a process in `state` whose local port is `port` (from /proc: its socket inodes,
    matched against the kernel's TCP table)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == state and fields[9] in inodes:
                count += 1
    return count


async def test_processes_share_the_port_and_survive_each_other(tmp_path: Path) -> None:
    mailstore = MailstoreProcess(tmp_path / "mailstore")
    mailstore.start()
    ports = (free_port(), free_port())
    env = {
        env_name("reuse_port"): "true",
        env_name("allow_plaintext_auth"): "true",
        **identity_env(mailstore.data_dir, "pop3"),
    }
    first = Pop3Process(tmp_path / "pop3-a", mailstore.address, env, ports)
    second = Pop3Process(tmp_path / "pop3-b", mailstore.address, env, ports)
    client = open_client(mailstore.address, mailstore.data_dir, mailstore.send_address)
    raw: list[RawClient] = []
    try:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=USER, password=PASSWORD))
        await deliver(client, [USER], b"Subject: one\r\n\r\nbody\r\n")
        first.start()
        second.start()  # the same ports: without SO_REUSEPORT this fails with EADDRINUSE
        assert second.proc is not None
        for _ in range(100):  # start() returns once the port answers, and the first process answers it
            if second.proc.poll() is not None or sockets_on(second.proc.pid, ports[0], LISTEN):
                break
            await asyncio.sleep(0.1)
        assert sockets_on(second.proc.pid, ports[0], LISTEN), second.log_path.read_text(errors="replace")
        for _ in range(24):
            raw.append(await RawClient.connect(ports[0]))  # reads the +OK greeting
        assert first.proc is not None and second.proc is not None
        counts = [sockets_on(p.proc.pid, ports[0], ESTABLISHED) for p in (first, second) if p.proc is not None]
        assert sum(counts) == 24 and min(counts) >= 1, counts  # both got clients (24 coin flips)

        first.kill()
        for _ in range(5):  # all new clients now reach the survivor
            conn = await RawClient.connect(ports[0])
            raw.append(conn)
            assert (await conn.login(USER, PASSWORD)).startswith(b"+OK maildrop has 1 messages")
            assert (await conn.cmd("QUIT")).startswith(b"+OK")
    finally:
        for conn in raw:
            await conn.close()
        await client.channel.close(None)
        first.stop()
        second.stop()
        mailstore.stop()
