"""The SMTP service's timeouts, limits and session robustness, against a real mailstore over sockets.

Timeouts run with 1-second settings; distinct client IPs come from PROXY v1 headers
(ADR 0007), so every connection stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from tests.e2e.smtp_support import ALICE, BOB, DOMAIN, PASSWORD, RawSmtp, SmtpStack, smtp_stack
from tests.e2e.test_smtp_rejections import MESSAGE, plain, transaction

WAIT = 10.0  # seconds any single expected reply or close may take on a loaded machine


async def closed_by_server(smtp: RawSmtp) -> bool:
    """True once the server has closed the connection (EOF, or a reset)."""
    try:
        return await asyncio.wait_for(smtp.reader.read(), WAIT) == b""
    except ConnectionError:
        return True


async def eventually(condition: Callable[[], bool]) -> bool:
    """Whether `condition` holds within WAIT seconds (polled: server state has no event to wait on)."""
    for _ in range(int(WAIT / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def all_sessions_gone(stack: SmtpStack) -> bool:
    """The limiter is back to zero: no slot leaked."""
    return await eventually(lambda: stack.server.limiter.total == 0)


# ---------------------------------------------------------------- timeouts (RFC 5321 §4.5.3.2)


async def test_silent_client_gets_421_timeout_and_is_closed(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, smtp_command_timeout=1) as stack:
        idle = await RawSmtp.connect(stack.ports["smtp"])  # silent from the greeting on
        greeted = await RawSmtp.connect(stack.ports["submission"])
        await greeted.greet()  # silent after a command
        for smtp in (idle, greeted):
            if smtp is idle:
                assert (await smtp.reply()).startswith("220 ")
            assert (await smtp.reply(WAIT)).startswith("421 4.4.2")
            assert await closed_by_server(smtp)
            await smtp.close()
        assert await all_sessions_gone(stack)


async def test_data_stall_gets_421_and_stores_nothing(tmp_path: Path) -> None:
    # A long command timeout: only the DATA timeout can end these sessions in time.
    async with smtp_stack(tmp_path, smtp_command_timeout=60, smtp_data_timeout=1) as stack:
        midway = await transaction(stack.ports["smtp"])
        await midway.send(b"Subject: stalled\r\n\r\n" + b"some lines\r\n" * 20)  # then nothing
        at_once = await transaction(stack.ports["smtp"])  # nothing at all after the 354
        for smtp in (midway, at_once):
            assert (await smtp.reply(WAIT)).startswith("421 4.4.2")
            assert await closed_by_server(smtp)
            await smtp.close()
        assert await stack.count() == 0
        assert await all_sessions_gone(stack)


async def test_data_timeout_counts_each_pause_not_the_whole_message(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, smtp_command_timeout=60, smtp_data_timeout=1) as stack:
        smtp = await transaction(stack.ports["smtp"])
        await smtp.send(b"Subject: slow\r\n\r\n")
        for _ in range(4):  # 1.6 s in all, no pause reaches 1 s
            await asyncio.sleep(0.4)
            await smtp.send(b"a slow line\r\n")
        assert (await smtp.cmd(b".")).startswith("250 2.0.0")
        await smtp.close()
        assert await stack.count() == 1


# ---------------------------------------------------------------- AUTH failures per IP


async def test_auth_failure_limit_spans_connections_until_the_window_passes(tmp_path: Path) -> None:
    async with smtp_stack(
        tmp_path,
        allow_plaintext_auth=True,
        auth_max_attempts_per_ip=3,
        auth_failure_window=2,
        smtp_auth_failure_delay_ms=10,
    ) as stack:
        early = await RawSmtp.connect(stack.ports["submission"])  # opened before any failure
        await early.greet()
        for _ in range(3):  # one failure per connection: they add up per IP
            smtp = await RawSmtp.connect(stack.ports["submission"])
            await smtp.greet()
            assert (await smtp.cmd("AUTH PLAIN " + plain(ALICE, "wrong"))).startswith("535 5.7.8")
            await smtp.close()
        # Within the window even the right password is refused, on a new connection and on an open one.
        fresh = await RawSmtp.connect(stack.ports["submission"])
        await fresh.greet()
        for smtp in (fresh, early):
            refused = await smtp.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD))
            assert refused.startswith("454 4.7.0") and "Too many" in refused, refused
        # Once the failures age out of the window, the right password works again.
        core = stack.mailstore.core
        assert core is not None
        assert await eventually(lambda: not core.auth.throttle.blocked("127.0.0.1"))
        assert (await fresh.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD))).startswith("235 2.7.0")
        for smtp in (fresh, early):
            await smtp.close()


# ---------------------------------------------------------------- connection limits (421 4.7.0)


def proxy_v1(ip: str) -> bytes:
    return f"PROXY TCP4 {ip} 127.0.0.1 40000 25\r\n".encode()


async def connect_as(stack: SmtpStack, ip: str) -> tuple[RawSmtp, str]:
    """A connection that the server counts as coming from `ip`; (client, first reply)."""
    smtp = await RawSmtp.connect(stack.ports["smtp"])
    await smtp.send(proxy_v1(ip))
    return smtp, await smtp.reply(WAIT)


async def test_per_ip_and_total_connection_limits(tmp_path: Path) -> None:
    async with smtp_stack(
        tmp_path, proxy_protocol=True, smtp_max_connections_per_ip=2, smtp_max_connections=4
    ) as stack:
        open_: list[RawSmtp] = []
        for ip in ("192.0.2.1", "192.0.2.1"):
            smtp, greeting = await connect_as(stack, ip)
            assert greeting.startswith("220 ")
            open_.append(smtp)
        # A third from the same IP: per-IP limit, refused before the greeting and closed.
        third, reply = await connect_as(stack, "192.0.2.1")
        assert reply.startswith("421 4.7.0") and await closed_by_server(third)
        await third.close()
        # Other IPs still get in, up to the total.
        for ip in ("192.0.2.2", "192.0.2.3"):
            smtp, greeting = await connect_as(stack, ip)
            assert greeting.startswith("220 ")
            open_.append(smtp)
        fifth, reply = await connect_as(stack, "192.0.2.4")
        assert reply.startswith("421 4.7.0") and await closed_by_server(fifth)
        await fifth.close()
        # One session ends: its slot (total and per IP) is free again, and the others still work.
        await open_.pop(0).close()
        assert await eventually(lambda: stack.server.limiter.total == 3)
        again, greeting = await connect_as(stack, "192.0.2.1")
        assert greeting.startswith("220 ")
        open_.append(again)
        for smtp in open_:
            assert (await smtp.cmd("NOOP")).startswith("250")
            await smtp.close()
        assert await all_sessions_gone(stack)


async def test_refused_connections_leak_no_slots(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, smtp_max_connections_per_ip=1, smtp_max_connections=1) as stack:
        held = await RawSmtp.connect(stack.ports["smtp"])
        assert (await held.reply()).startswith("220 ")
        for port in (stack.ports["smtp"], stack.ports["submission"], stack.ports["smtp"]):
            refused = await RawSmtp.connect(port)
            assert (await refused.reply()).startswith("421 4.7.0")
            await refused.close()
        await held.close()
        assert await all_sessions_gone(stack)
        smtp = await transaction(stack.ports["smtp"])
        assert (await smtp.cmd(MESSAGE + b".")).startswith("250 2.0.0")
        await smtp.close()


# ---------------------------------------------------------------- session robustness


async def test_unknown_commands_then_a_valid_transaction(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        assert (await smtp.cmd("XYZZY")).startswith("500 5.5.2")
        assert (await smtp.cmd("FROB nicate")).startswith("500 5.5.2")
        assert (await smtp.cmd("RCPT TO:<" + ALICE + ">")).startswith("503 5.5.1")  # out of sequence
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250 2.1.0")
        assert (await smtp.cmd("BOGUS")).startswith("500 5.5.2")  # mid-transaction: the envelope survives
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250 2.1.5")
        assert (await smtp.cmd("DATA")).startswith("354")
        assert (await smtp.cmd(MESSAGE + b".")).startswith("250 2.0.0")
        await smtp.close()
        assert await stack.count() == 1


async def test_too_many_unknown_commands_close_the_session(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        for n in range(4):
            assert (await smtp.cmd(f"NONSENSE{n}")).startswith("500 5.5.2")
        assert (await smtp.cmd("NONSENSE4")).startswith("502 5.5.1")  # aiosmtpd's budget of 5
        assert await closed_by_server(smtp)
        await smtp.close()
        assert await all_sessions_gone(stack)


async def test_pipelined_commands_are_answered_in_order(tmp_path: Path) -> None:
    # RFC 2920 §3.1: MAIL, RCPTs and DATA in one write; after the data, the next group in one write.
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        assert "250-PIPELINING" in (await smtp.greet()).split("\n")
        await smtp.send(
            b"MAIL FROM:<x@remote.test>\r\n"
            + f"RCPT TO:<{ALICE}>\r\nRCPT TO:<nobody@{DOMAIN}>\r\nRCPT TO:<{BOB}>\r\n".encode()
            + b"DATA\r\n"
        )
        expected = ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354"]
        for prefix in expected:
            assert (await smtp.reply(WAIT)).startswith(prefix)
        await smtp.send(
            MESSAGE + b".\r\nMAIL FROM:<y@remote.test>\r\nRCPT TO:<" + BOB.encode() + b">\r\nRSET\r\nQUIT\r\n"
        )
        for prefix in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "250 2.0.0", "221 2.0.0"]:
            assert (await smtp.reply(WAIT)).startswith(prefix)
        assert await closed_by_server(smtp)
        await smtp.close()
        assert await stack.count(ALICE) == 1
        assert await stack.count(BOB) == 1  # the RSET group delivered nothing
