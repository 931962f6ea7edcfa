"""LMTP (RFC 2033) spoken directly: LHLO, a reply per recipient after DATA, trusted networks only."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest
from mailstack.v1 import mailstore_pb2 as pb
from prometheus_client import REGISTRY

from tests.e2e.smtp_support import ALICE, BOB, DOMAIN, RawSmtp, smtp_stack
from tests.fixtures.ports import free_port

CAROL = f"carol@{DOMAIN}"


def message(size: int = 0, subject: str = "lmtp") -> bytes:
    head = f"From: relay@remote.test\r\nSubject: {subject}\r\n\r\n".encode()
    return head + b"x" * 70 + b"\r\n" + (b"y" * 98 + b"\r\n") * (size // 100)


def lmtp_send(port: int, rcpts: list[str], data: bytes) -> tuple[dict[str, tuple[int, bytes]], list[tuple[int, bytes]]]:
    """(refused at RCPT, the replies after DATA: one per accepted recipient) through smtplib.LMTP,
    which reads only the first DATA reply itself (the rest are read here)."""
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        code, _ = lmtp.mail("relay@remote.test")
        assert code == 250
        refused, accepted = {}, 0
        for rcpt in rcpts:
            code, text = lmtp.rcpt(rcpt)
            if code == 250:
                accepted += 1
            else:
                refused[rcpt] = (code, text)
        replies = [lmtp.data(data)]
        replies += [lmtp.getreply() for _ in range(accepted - 1)]
        return refused, replies


async def test_each_recipient_gets_its_own_reply(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, lmtp_port=free_port()) as stack:
        admin = stack.client.admin
        await admin.CreateAccount(pb.CreateAccountRequest(name=CAROL, password="carol-secret-1"))
        await admin.SetQuota(pb.SetQuotaRequest(name=BOB, quota_bytes=5000))  # room for one 3000-byte message
        await admin.SetQuota(pb.SetQuotaRequest(name=CAROL, quota_bytes=1000))  # never room for 3000 bytes
        port = stack.ports["lmtp"]
        refused, replies = await asyncio.to_thread(lmtp_send, port, [ALICE, BOB], message(3000, "first"))
        assert refused == {} and [code for code, _ in replies] == [250, 250], replies
        rcpts = [ALICE, f"nobody@{DOMAIN}", BOB, CAROL, "x@elsewhere.test"]
        refused, replies = await asyncio.to_thread(lmtp_send, port, rcpts, message(3000, "second"))
        # Refused at RCPT: no reply for them after DATA.
        assert refused[f"nobody@{DOMAIN}"][0] == 550 and refused["x@elsewhere.test"][0] == 554, refused
        # After DATA, in RCPT order: stored, over quota now (452: Postfix defers it), never fits (552: bounced).
        assert [code for code, _ in replies] == [250, 452, 552], replies
        assert replies[0][1].startswith(b"2.0.0 <alice@example.test>")
        assert replies[1][1].startswith(b"4.2.2") and replies[2][1].startswith(b"5.2.2")
        assert await stack.count(ALICE) == 2 and await stack.count(BOB) == 1 and await stack.count(CAROL) == 0
        assert b"\r\n\tby localhost (mailstack) with LMTP id " in (await stack.inbox(ALICE))[0]  # RFC 3848


async def test_lhlo_only_and_what_it_offers(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, lmtp_port=free_port()) as stack:
        lmtp = await RawSmtp.connect(stack.ports["lmtp"])
        assert "LMTP" in (await lmtp.reply())
        assert (await lmtp.cmd("HELO client.test")).startswith("500 5.5.1")
        assert (await lmtp.cmd("EHLO client.test")).startswith("500 5.5.1")
        assert (await lmtp.cmd("MAIL FROM:<a@remote.test>")).startswith("503")  # no LHLO yet
        lhlo = (await lmtp.cmd("LHLO relay.test")).split("\n")
        assert lhlo[0].startswith("250-") and "250-PIPELINING" in lhlo and "250-ENHANCEDSTATUSCODES" in lhlo
        assert not any(word in line for line in lhlo for word in ("AUTH", "STARTTLS", "CHUNKING"))
        assert (await lmtp.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")).startswith("502 5.5.1")
        # A BDAT (not offered) ends the session: its octets cannot be told from commands.
        assert (await lmtp.cmd("MAIL FROM:<a@remote.test>")).startswith("250")
        assert (await lmtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await lmtp.cmd("BDAT 5 LAST")).startswith("502 5.5.1")
        assert await lmtp.reader.read() == b""
        await lmtp.close()
        assert await stack.count(ALICE) == 0


async def test_a_whole_transaction_refusal_is_repeated_per_recipient(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, lmtp_port=free_port(), max_message_size=2000) as stack:
        refused, replies = await asyncio.to_thread(lmtp_send, stack.ports["lmtp"], [ALICE, BOB], message(3000))
        assert refused == {} and [code for code, _ in replies] == [552, 552], replies
        # The session is in step afterwards: a small message goes through to both.
        refused, replies = await asyncio.to_thread(lmtp_send, stack.ports["lmtp"], [ALICE, BOB, ALICE], message())
        assert [code for code, _ in replies] == [250, 250, 250], replies  # a repeated RCPT gets its reply too
        assert await stack.count(ALICE) == 1 and await stack.count(BOB) == 1


async def test_subaddresses_over_lmtp(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, lmtp_port=free_port(), subaddress_folders=True) as stack:
        await stack.client.store.CreateMailbox(pb.CreateMailboxRequest(account=ALICE, name="lists"))
        refused, replies = await asyncio.to_thread(lmtp_send, stack.ports["lmtp"], [f"alice+lists@{DOMAIN}"], message())
        assert refused == {} and replies[0][0] == 250
        status = await stack.client.store.GetMailboxStatus(pb.MailboxStatusRequest(account=ALICE, name="lists"))
        assert status.messages == 1


async def test_untrusted_networks_are_refused_at_connect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = REGISTRY.get_sample_value(
        "mailstack_connections_refused_total", {"protocol": "lmtp", "reason": "untrusted_network"}
    )
    async with smtp_stack(tmp_path, lmtp_port=free_port(), lmtp_trusted_networks="10.0.0.0/8, fd00::/8") as stack:
        lmtp = await RawSmtp.connect(stack.ports["lmtp"])
        assert (await lmtp.reply()).startswith("554 5.7.1")
        assert await lmtp.reader.read() == b""  # closed
        await lmtp.close()
        refusals = [r for r in caplog.records if r.getMessage() == "lmtp connection refused"]
        assert refusals and getattr(refusals[0], "reason", "") == "untrusted_network"
        assert getattr(refusals[0], "remote_ip", "") == "127.0.0.1"
        # The other listeners are not affected.
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        assert (await smtp.greet()).startswith("250")
        await smtp.close()
    after = REGISTRY.get_sample_value(
        "mailstack_connections_refused_total", {"protocol": "lmtp", "reason": "untrusted_network"}
    )
    assert (after or 0) == (before or 0) + 1


async def test_lmtp_port_zero_is_off(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, lmtp_port=0) as stack:
        assert "lmtp" not in stack.ports
