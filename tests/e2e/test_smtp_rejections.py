"""Every refusal of the SMTP service, with its reply code, against a real mailstore over sockets."""

from __future__ import annotations

import asyncio
import base64
import smtplib
from pathlib import Path

import pytest
from mailstack.services.common.tls import client_ssl_context
from mailstack.v1 import mailstore_pb2 as pb

from tests.e2e.smtp_support import ALICE, BOB, DOMAIN, PASSWORD, RawSmtp, SmtpStack, smtp_stack

MESSAGE = b"From: x@remote.test\r\nSubject: t\r\n\r\nbody\r\n"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def transaction(port: int, rcpt: str = ALICE, sender: str = "x@remote.test") -> RawSmtp:
    smtp = await RawSmtp.connect(port)
    await smtp.greet()
    assert (await smtp.cmd(f"MAIL FROM:<{sender}>")).startswith("250 2.1.0")
    assert (await smtp.cmd(f"RCPT TO:<{rcpt}>")).startswith("250 2.1.5")
    assert (await smtp.cmd("DATA")).startswith("354")
    return smtp


async def test_ehlo_advertises_extensions_and_no_auth_on_inbound(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        ehlo = await smtp.greet()
        for word in ("SIZE 52428800", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8", "STARTTLS"):
            assert f"250-{word}" in ehlo.split("\n"), ehlo
        assert "AUTH" not in ehlo
        assert (await smtp.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD))).startswith("502 5.5.1")
        assert (await smtp.cmd("QUIT")).startswith("221 2.0.0")
        await smtp.close()


async def test_unknown_recipient_and_relay_on_inbound(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<nobody@{DOMAIN}>")).startswith("550 5.1.1")
        assert (await smtp.cmd("RCPT TO:<someone@elsewhere.test>")).startswith("554 5.7.1")
        assert (await smtp.cmd("RCPT TO:<not an address>")).startswith(("501", "553"))
        # The session goes on: a valid recipient is still accepted.
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250 2.1.5")
        await smtp.close()


async def test_stale_cached_recipient_is_refused_at_data_not_delivered(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await transaction(stack.ports["smtp"], rcpt=BOB)  # BOB is now cached as local
        assert (await smtp.cmd(MESSAGE + b".")).startswith("250 2.0.0")
        await stack.client.admin.DeleteAccount(pb.DeleteAccountRequest(name=BOB))
        # The cache still says local at RCPT; Deliver checks again and DATA refuses, never 250.
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{BOB}>")).startswith("250 2.1.5")
        assert (await smtp.cmd("DATA")).startswith("354")
        assert (await smtp.cmd(MESSAGE + b".")).startswith("550 5.1.1")
        # With another recipient stored, a temporary failure (the sender retries; BOB's loss is not hidden).
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        stack.server.recipients.remember_local(BOB, 0)
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250 2.1.5")
        assert (await smtp.cmd(f"RCPT TO:<{BOB}>")).startswith("250 2.1.5")
        assert (await smtp.cmd("DATA")).startswith("354")
        assert (await smtp.cmd(MESSAGE + b".")).startswith("451")
        # DATA dropped the stale entry: the next RCPT asks the mailstore.
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{BOB}>")).startswith("550 5.1.1")
        await smtp.close()


async def test_null_sender_is_accepted_for_bounces(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await transaction(stack.ports["smtp"], sender="")
        assert (await smtp.cmd(MESSAGE + b".")).startswith("250 2.0.0")
        await smtp.close()
        assert (await stack.inbox())[0].startswith(b"Return-Path: <>\r\n")


async def test_unknown_command_is_refused_and_session_continues(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        reply = await smtp.cmd("FROBNICATE now")
        assert reply[:3] in ("500", "502") and reply[4:9] in ("5.5.1", "5.5.2"), reply
        assert (await smtp.cmd("NOOP")).startswith("250 2.0.0")
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        await smtp.close()


async def test_1001_octet_lines_are_refused(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        # A command line over the limit.
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        assert (await smtp.cmd("NOOP " + "x" * 994)).startswith("500 5.5.2")  # 1001 octets with CRLF
        assert (await smtp.cmd("NOOP")).startswith("250")
        await smtp.close()
        # A DATA line of 1001 octets: refused after the end of DATA; 1000 octets pass.
        smtp = await transaction(stack.ports["smtp"])
        reply = await smtp.cmd(b"Subject: long\r\n\r\n" + b"y" * 999 + b"\r\n.")
        assert reply.startswith("500 5.5.2"), reply
        # A much longer line (beyond the reader's buffer limit) too.
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await smtp.cmd("DATA")).startswith("354")
        assert (await smtp.cmd(b"z" * 100_000 + b"\r\nmore\r\n.")).startswith("500 5.5.2")
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await smtp.cmd("DATA")).startswith("354")
        assert (await smtp.cmd(b"Subject: ok\r\n\r\n" + b"y" * 998 + b"\r\n.")).startswith("250 2.0.0")
        await smtp.close()
        assert await stack.count() == 1


@pytest.mark.parametrize(
    "smuggle", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n"], ids=["LF.LF", "CR.CR", "CRLF.LF", "LF.CRLF"]
)
async def test_smuggling_with_bare_newlines_is_refused(tmp_path: Path, smuggle: bytes) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await transaction(stack.ports["smtp"])
        # The smuggled second transaction would deliver a message "from" alice to bob.
        payload = (
            b"Subject: first\r\n\r\nhello"
            + smuggle
            + b"MAIL FROM:<"
            + ALICE.encode()
            + b">\r\nRCPT TO:<"
            + BOB.encode()
            + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
        )
        await smtp.send(payload)
        # Everything up to the real <CRLF>.<CRLF> was DATA, and it was refused as a whole.
        reply = await smtp.reply()
        assert reply.startswith("554 5.5.2"), reply
        # The session continues; nothing after the smuggle sequence was run as a command.
        assert (await smtp.cmd("NOOP")).startswith("250")
        await smtp.close()
        assert await stack.count(ALICE) == 0
        assert await stack.count(BOB) == 0


async def test_101st_recipient_is_refused(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        await stack.client.admin.AddAlias(pb.AddAliasRequest(address=f"@{DOMAIN}", account=ALICE))  # catch-all
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        # Pipelined, as a real MTA would send them.
        await smtp.send(b"".join(f"RCPT TO:<r{i}@{DOMAIN}>\r\n".encode() for i in range(101)))
        replies = [await smtp.reply() for _ in range(101)]
        assert all(r.startswith("250 2.1.5") for r in replies[:100]), replies[:100]
        assert replies[100].startswith("452 4.5.3"), replies[100]
        assert (await smtp.cmd("DATA")).startswith("354")
        assert (await smtp.cmd(MESSAGE + b".")).startswith("250 2.0.0")
        await smtp.close()
        assert await stack.count() == 1  # all 100 addresses reach alice: one copy


async def test_oversized_message_is_refused(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, max_message_size=10_000) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        ehlo = await smtp.greet()
        assert "250-SIZE 10000" in ehlo.split("\n")
        assert (await smtp.cmd("MAIL FROM:<x@remote.test> SIZE=20000")).startswith("552 5.3.4")
        await smtp.close()
        # Without SIZE=, at the end of DATA.
        smtp = await transaction(stack.ports["smtp"])
        assert (await smtp.cmd(MESSAGE + b"x" * 60 + b"\r\n" + (b"y" * 70 + b"\r\n") * 200 + b".")).startswith(
            "552 5.3.4"
        )
        await smtp.close()
        assert await stack.count() == 0


async def test_over_quota_recipients(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        await stack.client.admin.SetQuota(pb.SetQuotaRequest(name=ALICE, quota_bytes=5000))
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        # Could never fit: 552 5.2.2.
        assert (await smtp.cmd("MAIL FROM:<x@remote.test> SIZE=6000")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("552 5.2.2")
        assert (await smtp.cmd("RSET")).startswith("250")
        # Fill the mailbox, then the next one is temporarily refused: 452 4.2.2.
        assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await smtp.cmd("DATA")).startswith("354")
        assert (await smtp.cmd(MESSAGE + (b"f" * 70 + b"\r\n") * 60 + b".")).startswith("250")
        assert (await smtp.cmd("MAIL FROM:<x@remote.test> SIZE=1000")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("452 4.2.2")
        await smtp.close()


async def test_abrupt_disconnect_mid_data_stores_nothing(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await transaction(stack.ports["smtp"])
        await smtp.send(b"Subject: cut\r\n\r\n" + b"partial line\r\n" * 100)
        smtp.writer.transport.abort()  # RST, no end of DATA
        # Give the server time to notice, then make sure a following delivery still works.
        smtp = await transaction(stack.ports["smtp"])
        assert (await smtp.cmd(MESSAGE + b".")).startswith("250")
        await smtp.close()
        bodies = await stack.inbox()
        assert len(bodies) == 1 and b"Subject: cut" not in bodies[0]


async def test_too_many_connections(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, smtp_max_connections_per_ip=2, smtp_max_connections=3) as stack:
        first = await RawSmtp.connect(stack.ports["smtp"])
        second = await RawSmtp.connect(stack.ports["submission"])  # the limits span all ports
        assert (await first.reply()).startswith("220")
        assert (await second.reply()).startswith("220")
        third = await RawSmtp.connect(stack.ports["smtp"])
        assert (await third.reply()).startswith("421 4.7.0")
        await third.close()
        await first.close()
        # A slot is free again once a session ends.
        for _ in range(100):
            if stack.server.limiter.total < 2:
                break
            await asyncio.sleep(0.02)
        again = await RawSmtp.connect(stack.ports["smtp"])
        assert (await again.reply()).startswith("220")
        await again.close()
        await second.close()


async def test_total_connection_limit(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, smtp_max_connections_per_ip=0, smtp_max_connections=2) as stack:
        clients = [await RawSmtp.connect(stack.ports["smtp"]) for _ in range(2)]
        for c in clients:
            assert (await c.reply()).startswith("220")
        extra = await RawSmtp.connect(stack.ports["submission"])
        assert (await extra.reply()).startswith("421 4.7.0")
        for c in [*clients, extra]:
            await c.close()


async def test_submission_requires_auth_and_tls_first(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["submission"])
        ehlo = await smtp.greet()
        assert "250-STARTTLS" in ehlo.split("\n")
        assert "AUTH" not in ehlo  # not before TLS
        assert (await smtp.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD))).startswith("538 5.7.11")
        # Without AUTH nothing can be sent: refused at RCPT, local or remote.
        assert (await smtp.cmd(f"MAIL FROM:<{ALICE}>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("554 5.7.1")
        assert (await smtp.cmd("RCPT TO:<x@remote.test>")).startswith("554 5.7.1")
        await smtp.close()


async def test_starttls_drops_a_command_pipelined_in_plaintext(tmp_path: Path) -> None:
    """RFC 3207 §6 / RFC 7817: `STARTTLS\r\nNOOP\r\n` in one packet: the NOOP sent in plaintext is
    never answered, neither before nor after the handshake (aiosmtpd's own STARTTLS)."""
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["submission"])
        await smtp.greet()
        await smtp.send(b"STARTTLS\r\nNOOP\r\n")
        assert (await smtp.reply()).startswith("220")
        await smtp.writer.start_tls(client_ssl_context(stack.cafile), server_hostname="localhost")
        ehlo = await smtp.cmd("EHLO client.test")  # the first reply inside TLS is to this, not to NOOP
        assert ehlo.startswith("250-") and "AUTH" in ehlo, ehlo
        with pytest.raises(TimeoutError):
            await smtp.reply(wait=0.3)  # nothing else is pending
        await smtp.close()


def _submit(stack: SmtpStack, sender: str, rcpt: str, user: str = ALICE, password: str = PASSWORD) -> object:
    with smtplib.SMTP("localhost", stack.ports["submission"], timeout=30) as s:
        s.starttls(context=client_ssl_context(stack.cafile))
        s.login(user, password)
        # The header From is the envelope sender's: submission checks both (issue 13).
        return s.sendmail(sender, [rcpt], MESSAGE.replace(b"x@remote.test", sender.encode()))


async def test_submission_sender_must_be_owned(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        await stack.client.admin.AddAlias(pb.AddAliasRequest(address=f"postmaster@{DOMAIN}", account=ALICE))
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await asyncio.to_thread(_submit, stack, BOB, ALICE)
        assert refused.value.smtp_code == 553 and refused.value.smtp_error.startswith(b"5.7.1")
        # Her own address and her alias are fine.
        assert await asyncio.to_thread(_submit, stack, ALICE, BOB) == {}
        assert await asyncio.to_thread(_submit, stack, f"postmaster@{DOMAIN}", BOB) == {}
        assert await stack.count(BOB) == 2


async def test_submission_to_remote_domain_is_queued(tmp_path: Path) -> None:
    # Issue 7: no more 550 for other domains on submission; the outbound queue takes them (ADR 0008).
    from mailstack.v1 import send_pb2 as spb
    from mailstack.v1 import send_pb2_grpc as spbg

    async with smtp_stack(tmp_path) as stack:
        assert await asyncio.to_thread(_submit, stack, ALICE, "someone@remote.test") == {}
        leased = await spbg.OutboundStub(stack.client.channel).LeaseOutbound(  # type: ignore[call-overload]
            spb.LeaseOutboundRequest(worker="test", max_messages=10)
        )
        [message] = leased.messages
        assert message.sender == ALICE and [list(d.recipients) for d in message.domains] == [["someone@remote.test"]]


async def test_auth_failures_are_slowed_and_limited(tmp_path: Path) -> None:
    async with smtp_stack(
        tmp_path, allow_plaintext_auth=True, auth_max_attempts_per_ip=3, smtp_auth_failure_delay_ms=10
    ) as stack:
        smtp = await RawSmtp.connect(stack.ports["submission"])
        ehlo = await smtp.greet()
        assert "250-AUTH LOGIN PLAIN" in ehlo.split("\n")
        for _ in range(3):
            assert (await smtp.cmd("AUTH PLAIN " + plain(ALICE, "wrong"))).startswith("535 5.7.8")
        # The budget of this IP is used up: even the right password is refused now, on any session.
        assert (await smtp.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD))).startswith("454 4.7.0")
        other = await RawSmtp.connect(stack.ports["submissions"])  # plain TCP: the TLS handshake never starts
        await other.close()
        second = await RawSmtp.connect(stack.ports["submission"])
        await second.greet()
        assert (await second.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD))).startswith("454 4.7.0")
        await second.close()
        await smtp.close()
        assert stack.mailstore.core is not None
        assert stack.mailstore.core.auth.throttle.blocked("127.0.0.1")


async def test_auth_plain_without_initial_response_and_login(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, allow_plaintext_auth=True) as stack:
        smtp = await RawSmtp.connect(stack.ports["submission"])
        await smtp.greet()
        assert await smtp.cmd("AUTH PLAIN") == "334 "  # empty challenge (RFC 4954 §4), as curl expects
        assert (await smtp.cmd(plain(ALICE, PASSWORD))).startswith("235 2.7.0")
        assert (await smtp.cmd("AUTH PLAIN")).startswith("503")  # already authenticated
        await smtp.close()
        smtp = await RawSmtp.connect(stack.ports["submission"])
        await smtp.greet()
        assert await smtp.cmd("AUTH LOGIN") == "334 " + base64.b64encode(b"Username:").decode()
        assert (
            await smtp.cmd(base64.b64encode(BOB.encode()).decode()) == "334 " + base64.b64encode(b"Password:").decode()
        )
        assert (await smtp.cmd(base64.b64encode(b"bob-secret-1").decode())).startswith("235 2.7.0")
        assert (await smtp.cmd(f"MAIL FROM:<{BOB}>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        await smtp.close()


async def test_stop_says_421_to_idle_sessions(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        await stack.server.stop(1.0)
        assert (await smtp.reply()).startswith("421 4.3.2")
        await smtp.close()
