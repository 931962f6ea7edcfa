"""Postfix (a private instance, tests/e2e/test_smtp_postfix.py) delivering to mailstack over LMTP.

Postfix's default transport is lmtp:inet:127.0.0.1:PORT, so mailstack is its mail store, as
behind any MTA. One message to four recipients: two stored, one over quota (452: Postfix
defers only that one) and one whose mailbox can never hold it (552: Postfix bounces only
that one, and its bounce comes back over LMTP to the sender's mailbox).
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from pathlib import Path

import pytest
from mailstack.v1 import mailstore_pb2 as pb

from tests.e2e.smtp_support import ALICE, BOB, DOMAIN, RawSmtp, smtp_stack
from tests.e2e.test_smtp_postfix import private_postfix
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

CAROL, DAVE, SENDER = f"carol@{DOMAIN}", f"dave@{DOMAIN}", f"sender@{DOMAIN}"
FILLER = b"x" * 78 + b"\r\n"


def status_of(log: str, rcpt: str) -> str:
    """Postfix's delivery status for one recipient ("" while it has none)."""
    found = re.findall(rf"to=<{re.escape(rcpt)}>,.*? status=(\w+)", log)
    return found[-1] if found else ""


async def test_postfix_delivers_over_lmtp_with_a_result_per_recipient(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, lmtp_port=free_port()) as stack:
        admin = stack.client.admin
        for name in (CAROL, DAVE, SENDER):
            await admin.CreateAccount(pb.CreateAccountRequest(name=name, password="some-secret-1"))
        await admin.SetQuota(pb.SetQuotaRequest(name=BOB, quota_bytes=5000))
        await admin.SetQuota(pb.SetQuotaRequest(name=CAROL, quota_bytes=1000))
        # Bob's mailbox is 3 KB full: the next 3 KB do not fit now (over quota, temporary).
        smtp = await RawSmtp.connect(stack.ports["smtp"])
        await smtp.greet()
        for command in ("MAIL FROM:<x@remote.test>", f"RCPT TO:<{BOB}>", "DATA"):
            assert (await smtp.cmd(command))[:1] in "23"
        assert (await smtp.cmd(b"Subject: filler\r\n\r\n" + FILLER * 38 + b".")).startswith("250")
        await smtp.close()

        extra = f"relayhost =\ndefault_transport = lmtp:inet:127.0.0.1:{stack.ports['lmtp']}\n"
        body = FILLER * 38
        message = f"From: {SENDER}\r\nSubject: via lmtp\r\n\r\n".encode() + body
        with private_postfix(0, extra) as (smtpd_port, directory):

            def submit() -> None:
                with smtplib.SMTP("127.0.0.1", smtpd_port, timeout=30) as s:
                    assert s.sendmail(SENDER, [ALICE, BOB, CAROL, DAVE], message) == {}

            await asyncio.to_thread(submit)
            log_file = directory / "log" / "postfix.log"
            log = ""
            for _ in range(300):  # at most 60 s for all four results and the bounce
                log = log_file.read_text(errors="replace") if log_file.exists() else ""
                done = all(status_of(log, r) for r in (ALICE, BOB, CAROL, DAVE)) and status_of(log, SENDER)
                if done:
                    break
                await asyncio.sleep(0.2)
            tail = "\n".join(log.splitlines()[-40:])
            assert status_of(log, ALICE) == "sent" and status_of(log, DAVE) == "sent", tail
            assert status_of(log, BOB) == "deferred" and "452 4.2.2" in log, tail
            assert status_of(log, CAROL) == "bounced" and "552 5.2.2" in log, tail
            assert status_of(log, SENDER) == "sent", tail  # the bounce, delivered over LMTP too
        for account in (ALICE, DAVE):
            [stored] = await stack.inbox(account)
            assert stored.endswith(body) and b"Subject: via lmtp\r\n" in stored
            assert b"by relay.test (Postfix)" in stored  # Postfix's own Received line, below ours
        assert await stack.count(BOB) == 1  # only the filler
        assert await stack.count(CAROL) == 0
        [bounce] = await stack.inbox(SENDER)
        report = bounce.decode(errors="replace")
        assert "Final-Recipient: rfc822; carol@example.test" in report, report[:2000]
        assert "alice@example.test" not in report.split("Final-Recipient", 1)[1]
        assert "bob@example.test" not in report
