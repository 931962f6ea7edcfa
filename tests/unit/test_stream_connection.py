"""STARTTLS shared by IMAP and POP3 (common/stream_connection.py): plaintext the client sent after
the command never reaches the TLS session, wherever it waits (RFC 3207 §6, RFC 2595 §4, RFC 7817)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailstack.services.common.stream_connection import start_tls
from mailstack.services.common.tls import client_ssl_context, ensure_self_signed, server_ssl_context


async def test_plaintext_buffered_behind_the_command_is_not_read_after_the_handshake(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed(cert, key, "localhost")
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\r\n"  # "INJECTED" waits in this reader's buffer
        reader, writer = await start_tls(writer, b"OK\r\n", server_ssl_context(cert, key), 2**16)
        received.set_result(await reader.readline())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"STARTTLS\r\nINJECTED\r\n")
    assert await reader.readline() == b"OK\r\n"
    await writer.start_tls(client_ssl_context(cert), server_hostname="localhost")
    writer.write(b"AFTER\r\n")
    assert await asyncio.wait_for(received, 10) == b"AFTER\r\n"
    writer.close()
    server.close()
    await server.wait_closed()
