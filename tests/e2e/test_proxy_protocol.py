"""PROXY protocol on every mail listener (ADR 0007): in-process servers, a raw client on
127.0.0.1 playing the load balancer. What shows the header's address was used: the SMTP
Received: header of a delivered message, the IMAP per-IP connection limit, the POP3 session's
remote address."""

from __future__ import annotations

import asyncio
import base64
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mailstack.services.common.config import Settings
from mailstack.services.common.proxy_protocol import V2_SIGNATURE
from mailstack.services.common.tls import client_ssl_context
from mailstack.services.imap.server import ImapServer
from mailstack.services.pop3.server import Pop3Server

from tests.e2e.smtp_support import ALICE, PASSWORD, smtp_stack
from tests.fixtures.mailstore import running_mailstore, settings_for
from tests.fixtures.pop3 import port_of, running_pop3

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def v1(source: str, port: int = 40001) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = "::1" if ":" in source else "127.0.0.1"
    return f"PROXY {family} {source} {destination} {port} 25\r\n".encode()


def v2_ipv4(source: str, port: int = 40002) -> bytes:
    body = bytes(int(p) for p in source.split(".")) + bytes([127, 0, 0, 1]) + struct.pack("!HH", port, 25)
    tlv = bytes([0x04, 0x00, 0x03]) + b"abc"  # a NOOP TLV, skipped
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body) + len(tlv)) + body + tlv


def v2_ipv6(source: bytes, port: int = 40003) -> bytes:
    body = source + bytes(15) + b"\x01" + struct.pack("!HH", port, 25)  # source, ::1, ports
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x21, len(body)) + body


async def connect(port: int, header: bytes = b"", tls: ssl.SSLContext | None = None) -> Streams:
    """Like a balancer: the header, then at once the client's bytes (the ClientHello on TLS ports)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(header)
    if tls is not None:
        await writer.start_tls(tls, server_hostname="localhost")
    return reader, writer


async def line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), 10)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError, ssl.SSLError):
        pass


async def closed_without_greeting(port: int, sent: bytes) -> bool:
    reader, writer = await connect(port, sent)
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionError:
        return True
    finally:
        await close(writer)


# ---------------------------------------------------------------- SMTP


async def smtp_reply(reader: asyncio.StreamReader) -> str:
    while True:
        text = (await line(reader)).decode()
        if len(text) < 4 or text[3] != "-":
            return text


async def smtp_deliver(streams: Streams, *, auth: bool = False) -> None:
    reader, writer = streams
    assert (await smtp_reply(reader)).startswith("220 ")
    commands = ["EHLO balanced.test"]
    if auth:
        commands.append("AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode())
    commands += [f"MAIL FROM:<{ALICE if auth else 'bob@remote.test'}>", f"RCPT TO:<{ALICE}>", "DATA"]
    for command in commands:
        writer.write(command.encode() + b"\r\n")
        assert (await smtp_reply(reader))[0] in "23", command
    writer.write(b"Subject: proxied\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    assert (await smtp_reply(reader)).startswith("250 ")
    await close(writer)


async def test_smtp_uses_the_headers_address_v1_v2_and_before_implicit_tls(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, proxy_protocol=True) as stack:
        await smtp_deliver(await connect(stack.ports["smtp"], v1("203.0.113.7")))
        await smtp_deliver(await connect(stack.ports["smtp"], v2_ipv6(bytes.fromhex("20010db8") + bytes(11) + b"\x01")))
        tls = client_ssl_context(stack.cafile)
        await smtp_deliver(await connect(stack.ports["submissions"], v2_ipv4("198.51.100.9"), tls), auth=True)
        received = [message.split(b"\r\n\r\n", 1)[0] for message in await stack.inbox()]
        assert b"([203.0.113.7])" in received[0]
        assert b"([2001:db8::1])" in received[1]
        assert b"([198.51.100.9])" in received[2] and b"with ESMTPSA" in received[2]
        # a trusted peer (127.0.0.1) without a header is closed before any greeting
        assert await closed_without_greeting(stack.ports["smtp"], b"EHLO no-header.test\r\n")
        assert await closed_without_greeting(stack.ports["submissions"], b"\x16\x03\x01\x00\xa5\x01")


async def test_smtp_untrusted_peer_is_served_with_its_own_address(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, proxy_protocol=True, proxy_trusted_networks="192.0.2.0/24") as stack:
        reader, writer = await connect(stack.ports["smtp"])
        assert (await smtp_reply(reader)).startswith("220 ")  # no header expected from it
        writer.write(v1("203.0.113.7"))  # and one it sends is not interpreted
        assert (await smtp_reply(reader)).startswith("500 ")
        await close(writer)
        await smtp_deliver(await connect(stack.ports["smtp"]))
        assert b"([127.0.0.1])" in (await stack.inbox())[0]


async def test_smtp_proxy_off_by_default_a_proxy_line_is_a_bad_command(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        reader, writer = await connect(stack.ports["smtp"])
        assert (await smtp_reply(reader)).startswith("220 ")
        writer.write(v1("203.0.113.7"))
        assert (await smtp_reply(reader)).startswith("500 ")
        await close(writer)


# ---------------------------------------------------------------- IMAP


@asynccontextmanager
async def running_imap(tmp_path: Path, **overrides: object) -> AsyncIterator[tuple[ImapServer, Settings]]:
    settings = settings_for(tmp_path, imap_port=0, imaps_port=0, **overrides)
    async with running_mailstore(settings) as (mailstore, _client):
        server = ImapServer(settings.replace(mailstore_addr=mailstore.address))
        await server.start()
        try:
            yield server, settings
        finally:
            await server.stop(1.0)


def imap_ports(server: ImapServer) -> tuple[int, int]:
    ports = dict(server.listeners)
    return int(ports["IMAP (STARTTLS)"].rsplit(":", 1)[1]), int(ports["IMAPS"].rsplit(":", 1)[1])


async def test_imap_per_ip_limit_counts_the_headers_address(tmp_path: Path) -> None:
    async with running_imap(tmp_path, proxy_protocol=True, imap_max_connections_per_ip=1) as (server, settings):
        plain, implicit = imap_ports(server)
        first = await connect(plain, v1("203.0.113.7"))
        assert (await line(first[0])).startswith(b"* OK")
        # the same client through v2: over its per-IP limit, although every socket comes from 127.0.0.1
        second = await connect(plain, v2_ipv4("203.0.113.7"))
        assert (await line(second[0])).startswith(b"* BYE [UNAVAILABLE] too many connections from your address")
        # another client, header before TLS on the implicit-TLS port
        third = await connect(implicit, v2_ipv4("203.0.113.8"), client_ssl_context(settings.effective_tls_cert))
        assert (await line(third[0])).startswith(b"* OK")
        third[1].write(b"a1 NOOP\r\n")
        assert await line(third[0]) == b"a1 OK completed\r\n"
        for _, writer in (first, second, third):
            await close(writer)
        assert await closed_without_greeting(plain, b"a1 CAPABILITY\r\n")
        assert await closed_without_greeting(implicit, b"\x16\x03\x01\x00\xa5\x01")


async def test_imap_proxy_off_by_default_a_proxy_line_is_a_bad_command(tmp_path: Path) -> None:
    async with running_imap(tmp_path) as (server, _settings):
        reader, writer = await connect(imap_ports(server)[0])
        assert (await line(reader)).startswith(b"* OK")
        writer.write(v1("203.0.113.7"))
        assert (await line(reader)).startswith(b"PROXY BAD")
        await close(writer)


# ---------------------------------------------------------------- POP3


def pop3_remote_ips(server: Pop3Server) -> set[str]:
    return {conn.remote_ip for conn in server.sessions.values()}


async def test_pop3_session_sees_the_headers_address(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, proxy_protocol=True)
    async with running_pop3(settings) as server:
        plain = await connect(port_of(server, "POP3 (STLS)"), v1("2001:db8::5"))
        assert (await line(plain[0])).startswith(b"+OK")
        tls = client_ssl_context(settings.effective_tls_cert)
        implicit = await connect(port_of(server, "POP3S"), v2_ipv4("198.51.100.3"), tls)
        assert (await line(implicit[0])).startswith(b"+OK")
        implicit[1].write(b"CAPA\r\n")
        assert (await line(implicit[0])).startswith(b"+OK")
        assert pop3_remote_ips(server) == {"2001:db8::5", "198.51.100.3"}
        for _, writer in (plain, implicit):
            await close(writer)
        assert await closed_without_greeting(port_of(server, "POP3 (STLS)"), b"CAPA\r\n")


async def test_pop3_proxy_off_by_default_a_proxy_line_is_a_bad_command(tmp_path: Path) -> None:
    async with running_pop3(settings_for(tmp_path)) as server:
        reader, writer = await connect(port_of(server, "POP3 (STLS)"))
        assert (await line(reader)).startswith(b"+OK")
        writer.write(v1("203.0.113.7"))
        assert (await line(reader)).startswith(b"-ERR")
        assert pop3_remote_ips(server) == {"127.0.0.1"}
        await close(writer)
