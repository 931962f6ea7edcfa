"""The metrics port from a hostile client's side: oversized, endless, silent and malformed requests
get a clear status or a closed connection, never a stuck server, and /live keeps answering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from mailstack.services.common import metrics
from mailstack.services.common.metrics import MetricsServer


async def always_ready() -> bool:
    return True


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MetricsServer]:
    monkeypatch.setattr(metrics, "READ_TIMEOUT", 0.5)
    served = MetricsServer("127.0.0.1", 0, always_ready)
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


async def exchange(server: MetricsServer, data: bytes) -> bytes:
    """Send `data`, then read until the server closes (bounded by a timeout)."""
    host, port = server.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_a_request_head_over_the_limit_is_431(server: MetricsServer) -> None:
    head = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 9000 + b"\r\n\r\n"
    assert (await exchange(server, head)).startswith(b"HTTP/1.1 431 ")


async def test_a_head_that_never_ends_is_closed(server: MetricsServer) -> None:
    # No blank line within the reader's limit: the connection is closed without an answer.
    assert await exchange(server, b"GET / HTTP/1.1\r\nX: " + b"b" * 100_000) == b""


async def test_a_silent_client_is_closed_and_others_are_served(server: MetricsServer) -> None:
    host, port = server.address.rsplit(":", 1)
    silent_reader, silent_writer = await asyncio.open_connection(host, int(port))
    try:
        assert (await exchange(server, b"GET /live HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(silent_reader.read(), 5) == b""  # closed after READ_TIMEOUT
    finally:
        silent_writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x00\x01\x02\r\n\r\n", b"405"),  # not a method
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET\r\n\r\n", b"404"),  # no target
        (b"GET /metrics?name[]=\xff HTTP/1.1\r\n\r\n", b"400"),  # a query that is not UTF-8
        (b"GET /metrics HTTP/1.1\r\nAccept: \xff\xfe\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\nAccept: ;;;,*/*;q=x\r\n\r\n", b"200"),  # junk: text format
    ],
)
async def test_malformed_requests_get_a_status(server: MetricsServer, request_bytes: bytes, status: bytes) -> None:
    answer = await exchange(server, request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
