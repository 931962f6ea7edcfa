"""Connection floods against the embedded default and the deployed processes (issue 13 §5): POP3's
connection limits, slow half-sent lines (slowloris) closed at the command deadline in POP3, IMAP
and SMTP, SMTP's per-IP share of its total, and the refusals told in each protocol's words, logged
and counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.attacks.frontends import Line, frontends, metric
from tests.fixtures.topology import Topology, running_topology

TRICKLE = 0.2  # seconds between the slow client's bytes
TRICKLE_FOR = 6.0  # how long it would keep trickling; the server must cut it off well before


async def test_pop3_refuses_connections_beyond_its_limits(tmp_path: Path) -> None:
    async with frontends(tmp_path, pop3_max_connections=6, pop3_max_connections_per_ip=4) as stack:
        refused_before = metric("mailstack_connections_refused_total", protocol="pop3", reason="per_ip")
        held = []
        for _ in range(4):
            client = await Line.connect(stack.pop3_port)
            assert (await client.line()).startswith(b"+OK")
            held.append(client)
        flooder = await Line.connect(stack.pop3_port)
        # RFC 2449 §8 / RFC 3206 §4: told why, in the greeting, then closed
        assert await flooder.line() == b"-ERR [SYS/TEMP] too many connections from your address, try again later\r\n"
        assert await flooder.line() == b""
        assert metric("mailstack_connections_refused_total", protocol="pop3", reason="per_ip") - refused_before == 1
        # the per-IP share leaves room for others, up to the total
        for source in ("127.0.0.2", "127.0.0.3"):
            client = await Line.connect(stack.pop3_port, source)
            assert (await client.line()).startswith(b"+OK")
            held.append(client)
        late = await Line.connect(stack.pop3_port, "127.0.0.4")
        assert await late.line() == b"-ERR [SYS/TEMP] too many connections, try again later\r\n"
        # a slot comes back when its connection ends
        await held.pop(0).close()
        for _ in range(50):
            again = await Line.connect(stack.pop3_port, "127.0.0.4")
            greeting = await again.line()
            await again.close()
            if greeting.startswith(b"+OK"):
                break
            await asyncio.sleep(0.1)
        assert greeting.startswith(b"+OK")
        for client in (*held, flooder, late):
            await client.close()
        refusals = [line for line in stack.auth_lines() if line["event"] == "connection_refused"]
        assert {(line["protocol"], line["reason"], line["remote_ip"]) for line in refusals} >= {
            ("pop3", "per_ip", "127.0.0.1"),
            ("pop3", "total", "127.0.0.4"),
        }


async def slow_clients(port: int, count: int, first: bytes, partial: bytes) -> list[tuple[float, bytes]]:
    """`count` connections that read the greeting, send `first` (whole lines), then `partial`
    one byte every TRICKLE seconds, never its end of line; how long each stayed open after the
    first byte, and the last line the server sent."""

    async def one() -> tuple[float, bytes]:
        client = await Line.connect(port)
        try:
            await client.line()
            if first:
                await client.send(first)
                # the continuation ("+ ") of AUTH PLAIN, read before the trickle starts
                await client.line()
            started = time.monotonic()

            async def goodbye() -> bytes:
                """The server's last line before it closed (b"" for none)."""
                last = b""
                try:
                    while line := await client.reader.readline():
                        last = line
                except (ConnectionError, OSError):
                    pass  # a reset after the goodbye: closed too
                return last

            closed = asyncio.create_task(goodbye())
            for byte in partial * int(TRICKLE_FOR / TRICKLE / len(partial) + 1):
                if closed.done() or time.monotonic() - started > TRICKLE_FOR:
                    break
                try:
                    await client.send(bytes([byte]))
                except (ConnectionError, OSError):
                    break
                await asyncio.wait([closed], timeout=TRICKLE)
            last = await asyncio.wait_for(closed, TRICKLE_FOR)
            return time.monotonic() - started, last
        finally:
            await client.close()

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_pop3_half_sent_lines_are_closed_at_the_deadline(tmp_path: Path) -> None:
    async with frontends(tmp_path, pop3_idle_timeout=1) as stack:
        closed = await slow_clients(stack.pop3_port, 20, b"", b"USER aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        assert max(seconds for seconds, _ in closed) < 3.0, closed
        assert {last for _, last in closed} == {b"-ERR autologout: idle for too long\r\n"}


async def test_pop3_half_sent_sasl_response_is_closed_at_the_deadline(tmp_path: Path) -> None:
    async with frontends(tmp_path, pop3_idle_timeout=1) as stack:
        closed = await slow_clients(stack.pop3_port, 5, b"AUTH PLAIN\r\n", b"AGFsaWNlAHNlY3JldA" * 4)
        assert max(seconds for seconds, _ in closed) < 3.0, closed
        assert {last for _, last in closed} == {b"-ERR autologout: idle for too long\r\n"}


async def test_imap_half_sent_lines_are_closed_at_the_deadline(tmp_path: Path) -> None:
    async with frontends(tmp_path, imap_preauth_timeout=1) as stack:
        closed = await slow_clients(stack.imap_port, 20, b"", b"a LOGIN aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        assert max(seconds for seconds, _ in closed) < 3.0, closed
        assert {last for _, last in closed} == {b"* BYE autologout: idle for too long\r\n"}


async def test_imap_half_sent_authenticate_response_is_closed_at_the_deadline(tmp_path: Path) -> None:
    async with frontends(tmp_path, imap_preauth_timeout=1) as stack:
        closed = await slow_clients(stack.imap_port, 5, b"a AUTHENTICATE PLAIN\r\n", b"AGFsaWNl" * 8)
        assert max(seconds for seconds, _ in closed) < 3.0, closed
        assert {last for _, last in closed} == {b"* BYE autologout: idle for too long\r\n"}


async def test_smtp_half_sent_lines_are_closed_at_the_deadline(tmp_path: Path) -> None:
    async with frontends(tmp_path, smtp_command_timeout=1) as stack:
        closed = await slow_clients(stack.submission_port, 20, b"", b"EHLO aaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        assert max(seconds for seconds, _ in closed) < 3.0, closed
        assert {last for _, last in closed} == {b"421 4.4.2 Timeout, closing connection\r\n"}


async def test_smtp_per_ip_share_leaves_room_for_other_senders(tmp_path: Path) -> None:
    async with frontends(tmp_path, smtp_max_connections=6, smtp_max_connections_per_ip=4) as stack:
        before = metric("mailstack_connections_refused_total", protocol="smtp", reason="per_ip")
        held = []
        for _ in range(4):
            client = await Line.connect(stack.submission_port)
            assert (await client.smtp_reply()).startswith(b"220 ")
            held.append(client)
        flooder = await Line.connect(stack.submission_port)
        assert await flooder.smtp_reply() == b"421 4.7.0 Too many connections, try again later\r\n"
        assert metric("mailstack_connections_refused_total", protocol="smtp", reason="per_ip") - before == 1
        sender = await Line.connect(stack.submission_port, "127.0.0.2")
        assert (await sender.smtp_reply()).startswith(b"220 ")
        for client in (*held, flooder, sender):
            await client.close()


async def test_imap_refusal_is_logged_and_counted(tmp_path: Path) -> None:
    async with frontends(tmp_path, imap_max_connections_per_ip=2) as stack:
        before = metric("mailstack_connections_refused_total", protocol="imap", reason="per_ip")
        held = [await Line.connect(stack.imap_port) for _ in range(2)]
        for client in held:
            assert (await client.line()).startswith(b"* OK")
        flooder = await Line.connect(stack.imap_port)
        assert await flooder.line() == b"* BYE [UNAVAILABLE] too many connections from your address\r\n"
        assert metric("mailstack_connections_refused_total", protocol="imap", reason="per_ip") - before == 1
        other = await Line.connect(stack.imap_port, "127.0.0.2")
        assert (await other.line()).startswith(b"* OK")
        for client in (*held, flooder, other):
            await client.close()
        assert any(line["event"] == "connection_refused" and line["protocol"] == "imap" for line in stack.auth_lines())


@pytest.mark.slow
async def test_floods_against_the_deployed_processes(tmp_path: Path) -> None:
    """The same floods at the multi-process topology, its limits set through the environment as an
    operator would: per-IP shares in pop3 and smtp, and one-second line deadlines everywhere."""

    def tune(topo: Topology) -> None:
        topo.pop3.env.update({"MAILSTACK_POP3_MAX_CONNECTIONS_PER_IP": "3", "MAILSTACK_POP3_IDLE_TIMEOUT": "1"})
        topo.imaps[0].env["MAILSTACK_IMAP_PREAUTH_TIMEOUT"] = "1"
        topo.smtp.env.update({"MAILSTACK_SMTP_MAX_CONNECTIONS_PER_IP": "3", "MAILSTACK_SMTP_COMMAND_TIMEOUT": "1"})

    with running_topology(tmp_path, tune=tune) as topo:
        pop3, imap, smtp = topo.pop3.ports["pop3"], topo.imaps[0].ports["imap"], topo.smtp.ports["smtp"]
        held = []
        for _ in range(3):
            client = await Line.connect(pop3)
            assert (await client.line()).startswith(b"+OK")
            held.append(client)
        flooder = await Line.connect(pop3)
        assert await flooder.line() == b"-ERR [SYS/TEMP] too many connections from your address, try again later\r\n"
        other = await Line.connect(pop3, "127.0.0.2")
        assert (await other.line()).startswith(b"+OK")
        held += [flooder, other]
        for _ in range(3):
            client = await Line.connect(smtp)
            assert (await client.smtp_reply()).startswith(b"220 ")
            held.append(client)
        flooder = await Line.connect(smtp)
        assert (await flooder.smtp_reply()).startswith(b"421 4.7.0")
        other = await Line.connect(smtp, "127.0.0.2")
        assert (await other.smtp_reply()).startswith(b"220 ")
        for client in (*held, flooder, other):
            await client.close()
        await asyncio.sleep(0.5)  # the slots above are given back before the slow clients connect
        for port, partial, goodbye in (
            (pop3, b"USER aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", b"-ERR autologout: idle for too long\r\n"),
            (imap, b"a LOGIN aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", b"* BYE autologout: idle for too long\r\n"),
            (smtp, b"EHLO aaaaaaaaaaaaaaaaaaaaaaaaaaaaa", b"421 4.4.2 Timeout, closing connection\r\n"),
        ):
            closed = await slow_clients(port, 3, b"", partial)
            assert max(seconds for seconds, _ in closed) < 3.0, (port, closed)
            assert {last for _, last in closed} == {goodbye}, (port, closed)
