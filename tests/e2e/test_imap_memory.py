"""1,000 concurrent authenticated IDLE connections on one imap process: its memory (issue 4:
well under 100 MB; a Dovecot process per connection costs several MB each)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.test_imap_sessions import _serve_imap
from tests.fixtures.imap_server import PASSWORD, imap_env

CONNECTIONS = 1000


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _idle_client(
    port: int, user: str, ready: asyncio.Queue[None]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(f'a LOGIN {user} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    while not (await reader.readline()).startswith(b"+ "):
        pass
    await ready.put(None)
    return reader, writer


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_thousand_idle_connections_memory(tmp_path: Path) -> None:
    # 100 logins at a time from one IP: over the auth throttle's in-progress limit (ADR 0011)
    limits = {"imap_max_connections_per_ip": 5000, "imap_max_connections_per_user": 5000}
    with imap_env(tmp_path, auth_max_attempts_per_ip=5000, auth_max_attempts_per_account=5000, **limits) as env:
        proc, port = await asyncio.to_thread(
            _serve_imap,
            tmp_path,
            env,
            "memory://",
            {"MAILSTACK_IMAP_MAX_CONNECTIONS_PER_IP": "5000", "MAILSTACK_IMAP_MAX_CONNECTIONS_PER_USER": "5000"},
        )
        try:
            users = [env.new_account() for _ in range(10)]
            before = _rss_kib(proc.pid)
            ready: asyncio.Queue[None] = asyncio.Queue()
            clients = []
            for batch in range(0, CONNECTIONS, 100):
                clients += await asyncio.gather(
                    *(_idle_client(port, users[i % len(users)], ready) for i in range(batch, batch + 100))
                )
            assert ready.qsize() == CONNECTIONS
            await asyncio.sleep(1)
            after = _rss_kib(proc.pid)
            total_mib = after / 1024
            per_connection_kib = (after - before) / CONNECTIONS
            print(
                f"\nimap RSS: {before / 1024:.1f} MiB idle -> {total_mib:.1f} MiB with {CONNECTIONS} IDLE sessions "
                f"({per_connection_kib:.1f} KiB per connection)"
            )
            (tmp_path.parent / "imap_memory.txt").write_text(f"{before} {after}\n")
            assert total_mib < 100
            for _, writer in clients:
                writer.close()
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 15)
