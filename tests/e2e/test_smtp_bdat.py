"""BDAT (RFC 3030 CHUNKING) against a real mailstore over sockets: chunks, pipelining, the same
limits as DATA, and the cases a careless server gets wrong (mixing with DATA, a dropped client)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.smtp_support import ALICE, RawSmtp, smtp_stack, without_trace

MESSAGE = b"From: x@remote.test\r\nSubject: chunked\r\n\r\n.a line starting with a dot\r\nbody \xc3\xa9\r\n"


async def start(port: int) -> RawSmtp:
    smtp = await RawSmtp.connect(port)
    ehlo = await smtp.greet()
    assert "250-CHUNKING" in ehlo.split("\n"), ehlo
    assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
    assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250 2.1.5")
    return smtp


async def bdat(smtp: RawSmtp, chunk: bytes, last: bool = False) -> str:
    await smtp.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
    return await smtp.reply()


async def test_chunks_are_delivered_byte_exact_without_dot_stuffing(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await start(stack.ports["smtp"])
        assert (await bdat(smtp, MESSAGE[:10])).startswith("250 2.0.0 10 octets")
        assert (await bdat(smtp, MESSAGE[10:30])).startswith("250 2.0.0 20 octets")
        assert (await bdat(smtp, b"")).startswith("250")  # an empty chunk is allowed
        assert (await bdat(smtp, MESSAGE[30:], last=True)).startswith("250 2.0.0")
        # a second transaction in the same session, one chunk, pipelined with MAIL and RCPT
        await smtp.send(
            b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<%s>\r\nBDAT %d LAST\r\n%s" % (ALICE.encode(), len(MESSAGE), MESSAGE)
        )
        replies = [await smtp.reply() for _ in range(3)]
        assert [r[:3] for r in replies] == ["250", "250", "250"], replies
        assert (await smtp.cmd("QUIT")).startswith("221")
        await smtp.close()
        assert [without_trace(m) for m in await stack.inbox()] == [MESSAGE, MESSAGE]


async def test_bdat_keeps_the_data_rules(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, max_message_size=2000) as stack:
        smtp = await start(stack.ports["smtp"])
        # over the size limit: the chunks are read (the session stays in step), then 552
        lines = (b"x" * 98 + b"\r\n") * 11  # 1,100 octets
        assert (await bdat(smtp, lines)).startswith("250")
        assert (await bdat(smtp, lines)).startswith("552 5.3.4")  # failed at the chunk over the limit
        assert (await bdat(smtp, lines, last=True)).startswith("503 5.5.1")  # read, and no transaction
        # bare LF and a 1001-octet line are refused as in DATA
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await bdat(smtp, b"Subject: a\r\n\r\nbare\nLF\r\n", last=True)).startswith("5")
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await bdat(smtp, b"Subject: a\r\n\r\n" + b"z" * 999 + b"\r\n", last=True)).startswith("500 5.5.2")
        # DATA may not follow BDAT in one transaction (RFC 3030 §3); RSET starts over
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await bdat(smtp, b"Subject: a\r\n")).startswith("250")
        assert (await smtp.cmd("DATA")).startswith("503 5.5.1")
        assert (await smtp.cmd("RSET")).startswith("250")
        # BDAT without a recipient: the chunk is still read, then 503, and the session goes on
        assert (await bdat(smtp, b"NOOP\r\n", last=True)).startswith("503 5.5.1")
        assert (await smtp.cmd("NOOP")).startswith("250")
        assert await stack.count() == 0
        await smtp.close()


async def test_bad_size_closes_and_a_dropped_client_stores_nothing(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await start(stack.ports["smtp"])
        # a chunk whose size is unknown cannot be skipped: 501, then the server hangs up
        assert (await smtp.cmd("BDAT lots")).startswith("501 5.5.4")
        assert await asyncio.wait_for(smtp.reader.read(), 5) == b""
        await smtp.close()

        smtp = await start(stack.ports["smtp"])
        await smtp.send(b"BDAT 100 LAST\r\n" + MESSAGE[:50])  # half the announced chunk, then gone
        await smtp.close()
        await asyncio.sleep(0.3)
        healthy = await start(stack.ports["smtp"])  # the server serves the next client
        assert (await bdat(healthy, MESSAGE, last=True)).startswith("250")
        await healthy.close()
        assert [without_trace(m) for m in await stack.inbox()] == [MESSAGE]
