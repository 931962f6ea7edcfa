"""The frontend skeleton (common/frontend.py) with a small echo service: readiness, and the
graceful stop every frontend shares (stop accepting, idle sessions end at once, busy ones within
the grace period, then the channel closes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mailstack.services.common.config import Settings
from mailstack.services.common.frontend import StreamFrontend

from tests.fixtures.mailstore import settings_for


class Echo(StreamFrontend):
    """Echoes one line after `busy_for` seconds; waiting for that line counts as idle."""

    grpc_identity = "pop3"
    busy_for = 0.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.busy = asyncio.Event()  # a session has read its line

    async def open(self) -> None:
        await self.listen_streams([("echo", 0, False), ("echo TLS", 0, True)])

    def waiting(self, task: asyncio.Task[None]) -> bool:
        return self.sessions.get(task) == "idle"

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_address: tuple[str, int] | None = None,
        *,
        tls: bool,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions[task] = "idle"
        try:
            line = await reader.readline()
            self.sessions[task] = "busy"
            self.busy.set()
            await asyncio.sleep(self.busy_for)
            writer.write(line)
            await writer.drain()
        finally:
            self.sessions.pop(task, None)
            writer.close()


def port_of(server: Echo) -> int:
    return int(dict(server.listeners)["echo"].rsplit(":", 1)[1])


async def test_ready_only_between_start_and_stop(tmp_path: Path) -> None:
    server = Echo(settings_for(tmp_path))
    assert not server.ready and server.address == ""
    await server.start()
    assert server.ready and server.channel is not None and server.tls_context is not None
    assert [d for d, _ in server.listeners] == ["echo", "echo TLS"] and server.address
    await server.stop(1.0)
    assert not server.ready and server.channel is None
    await asyncio.wait_for(server.wait_closed(), 1)


async def test_stop_ends_idle_sessions_now_and_lets_busy_ones_finish(tmp_path: Path) -> None:
    server = Echo(settings_for(tmp_path))
    server.busy_for = 0.5
    await server.start()
    port = port_of(server)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(b"hello\n")
    await asyncio.wait_for(server.busy.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.stop(5.0)
    assert loop.time() - started < 4  # the busy one finished well within its grace
    assert await busy_reader.read() == b"hello\n"
    assert await idle_reader.read() == b""  # closed without waiting for the grace period
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer accepting
    for writer in (idle_writer, busy_writer):
        writer.close()


async def test_a_session_busy_beyond_the_grace_is_cut_off(tmp_path: Path) -> None:
    server = Echo(settings_for(tmp_path))
    server.busy_for = 30.0
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(b"hello\n")
    await asyncio.wait_for(server.busy.wait(), 5)
    await asyncio.wait_for(server.stop(0.2), 5)
    assert await reader.read() == b""
    assert not server.sessions
    writer.close()
