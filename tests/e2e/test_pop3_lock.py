"""The maildrop lock across pop3 processes: a second login gets [IN-USE]; after kill -9 of the
holder, the lock is free again within the lease time and nothing the dead session DELE'd is gone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import MailstoreProcess, deliver, identity_env, open_client
from tests.fixtures.pop3 import Pop3Process, RawClient

pytestmark = pytest.mark.slow

USER = "locked@example.test"
PASSWORD = "pw-123456"
LEASE_TTL = 3  # seconds; short so the test is quick


async def test_in_use_across_processes_and_free_after_kill(tmp_path: Path) -> None:
    mailstore = MailstoreProcess(tmp_path / "mailstore")
    mailstore.start()
    env = {
        env_name("pop3_lease_ttl"): str(LEASE_TTL),
        env_name("allow_plaintext_auth"): "true",
        **identity_env(mailstore.data_dir, "pop3"),
    }
    first = Pop3Process(tmp_path / "pop3-a", mailstore.address, env)
    second = Pop3Process(tmp_path / "pop3-b", mailstore.address, env)
    client = open_client(mailstore.address, mailstore.data_dir, mailstore.send_address)
    raw: list[RawClient] = []
    try:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=USER, password=PASSWORD))
        for n in range(3):
            await deliver(client, [USER], f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
        await asyncio.gather(asyncio.to_thread(first.start), asyncio.to_thread(second.start))

        holder = await RawClient.connect(first.port)
        raw.append(holder)
        assert (await holder.login(USER, PASSWORD)).startswith(b"+OK maildrop has 3 messages")
        assert (await holder.cmd("DELE 1")).startswith(b"+OK")
        assert (await holder.cmd("DELE 2")).startswith(b"+OK")

        other = await RawClient.connect(second.port)
        raw.append(other)
        assert (await other.login(USER, PASSWORD)).startswith(b"-ERR [IN-USE]")

        first.kill()  # SIGKILL: no QUIT, no lease release
        # the lease expires by itself: within the ttl (plus the renewal period already served)
        deadline = time.monotonic() + LEASE_TTL + 5
        while True:
            reply = await other.login(USER, PASSWORD)
            if reply.startswith(b"+OK"):
                break
            assert reply.startswith(b"-ERR [IN-USE]"), reply
            assert time.monotonic() < deadline, "lock still held after the lease time"
            await asyncio.sleep(0.5)
        assert reply.startswith(b"+OK maildrop has 3 messages"), "the dead session's DELEs were applied"
        assert (await other.cmd("QUIT")).startswith(b"+OK")
    finally:
        for c in raw:
            await c.close()
        await client.channel.close()
        first.kill()
        second.stop()
        mailstore.stop()
