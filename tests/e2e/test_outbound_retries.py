"""Retries, bounces and submission through the outbound queue, against a scripted MX on loopback."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import ssl
from email.message import Message
from pathlib import Path
from typing import cast

from mailstack.services.smtp.server import SmtpServer
from mailstack.v1 import send_pb2 as spb

from tests.e2e.outbound_support import (
    ALICE,
    PASSWORD,
    ScriptedMx,
    imap_fetch_all,
    outbound_stack,
    running_imap,
    scripted_mx,
    structured,
)

DELIVERED, DEFERRED, BOUNCED = spb.DELIVERY_DELIVERED, spb.DELIVERY_DEFERRED, spb.DELIVERY_BOUNCED


async def test_451_twice_then_250_is_delivered_on_the_third_attempt(tmp_path: Path) -> None:
    mx = ScriptedMx(replies=["451 4.3.0 try later", "451 4.3.0 still busy"])
    # A long first retry delay, so the deferred state can be seen; then short ones.
    async with (
        scripted_mx(mx) as port,
        outbound_stack(tmp_path, {"remote.test": port}, outbound_retry_schedule="1,0.2") as stack,
    ):
        reply = await stack.send(spb.SendHeader(structured=structured(ALICE, ["bob@remote.test"])))
        await stack.start_worker()
        deferred = await stack.wait_status(reply.message_id, lambda s: s.recipients[0].state == DEFERRED)
        [bob] = deferred.recipients
        assert bob.attempts == 1 and bob.last_error == "451 4.3.0 try later"
        assert bob.next_attempt_unix >= bob.updated_unix
        done = await stack.wait_status(reply.message_id, lambda s: s.recipients[0].state == DELIVERED)
        assert done.recipients[0].attempts == 3 and mx.data_attempts == 3
        assert len(mx.received) == 1


async def test_550_puts_a_dsn_in_the_local_senders_inbox(tmp_path: Path) -> None:
    mx = ScriptedMx(replies=["550 5.1.1 <bob@remote.test>: no such user"])
    async with scripted_mx(mx) as port, outbound_stack(tmp_path, {"remote.test": port}) as stack:
        await stack.start_worker()
        message = structured(ALICE, ["bob@remote.test"], subject="Invoice 7")
        reply = await stack.send(spb.SendHeader(structured=message))
        status = await stack.wait_status(reply.message_id, lambda s: s.recipients[0].state == BOUNCED)
        assert status.recipients[0].last_error.startswith("550 5.1.1")
        async with running_imap(stack) as imap_port:
            for _ in range(100):
                stored = await asyncio.to_thread(imap_fetch_all, imap_port, ALICE, PASSWORD)
                if stored:
                    break
                await asyncio.sleep(0.05)
        [raw] = stored
        dsn = email.message_from_bytes(raw, policy=email.policy.default)
        assert dsn.get_content_type() == "multipart/report"
        assert dsn.get_param("report-type") == "delivery-status"
        assert dsn["Auto-Submitted"] == "auto-replied"
        text, status_part, headers = dsn.iter_parts()
        assert "bob@remote.test" in text.get_content()
        assert status_part.get_content_type() == "message/delivery-status"
        per_message, per_recipient = cast(list[Message], status_part.get_payload())
        assert per_message["Reporting-MTA"].startswith("dns;")
        assert per_recipient["Final-Recipient"] == "rfc822; bob@remote.test"
        assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.1.1"
        assert per_recipient["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
        assert headers.get_content_type() == "text/rfc822-headers"
        assert b"Subject: Invoice 7" in raw


async def test_a_bounce_to_a_remote_sender_that_bounces_makes_no_loop(tmp_path: Path) -> None:
    mx = ScriptedMx(replies=["550 5.1.1 no such user", "550 5.1.1 no such sender either"])
    async with (
        scripted_mx(mx) as port,
        outbound_stack(tmp_path, {"remote.test": port, "shop.test": port}, from_domains=("shop.test",)) as stack,
    ):
        await stack.start_worker()
        reply = await stack.send(spb.SendHeader(structured=structured("noreply@shop.test", ["bob@remote.test"])))
        await stack.wait_status(reply.message_id, lambda s: s.recipients[0].state == BOUNCED)
        await stack.wait_for(lambda: mx.data_attempts == 2)  # the DSN to noreply@shop.test, refused too
        depth = stack.mailstore.sending
        assert depth is not None
        for _ in range(100):
            if await depth.queue.queue_depth() == 0:
                break
            await asyncio.sleep(0.05)
        assert await depth.queue.queue_depth() == 0
        await asyncio.sleep(0.5)
        assert mx.data_attempts == 2  # no DSN for the DSN (null sender)


async def test_submission_queues_remote_recipients(tmp_path: Path) -> None:
    mx = ScriptedMx()
    async with (
        scripted_mx(mx) as port,
        outbound_stack(
            tmp_path, {"remote.test": port}, smtp_port=0, submission_port=0, submissions_port=0, save_sent_copies=True
        ) as stack,
    ):
        smtp = SmtpServer(stack.settings.replace(mailstore_addr=stack.mailstore.address))
        await smtp.start()
        try:
            await stack.start_worker()
            submission = int(dict(smtp.listeners)["submission"].rsplit(":", 1)[1])
            context = ssl.create_default_context(cafile=stack.settings.effective_tls_cert)
            context.check_hostname = False
            data = f"From: {ALICE}\r\nTo: bob@remote.test, {ALICE}\r\nSubject: via 587\r\n\r\nhi\r\n".encode()

            def send() -> None:
                with smtplib.SMTP("127.0.0.1", submission, timeout=30) as s:
                    s.starttls(context=context)
                    s.login(ALICE, PASSWORD)
                    assert s.sendmail(ALICE, ["bob@remote.test", ALICE], data) == {}

            await asyncio.to_thread(send)
            await stack.wait_for(lambda: len(mx.received) == 1)
            [received] = mx.received
            assert received.recipients == ["bob@remote.test"] and received.sender == ALICE
            assert b"Subject: via 587" in received.data
            async with running_imap(stack) as imap_port:
                inbox = await asyncio.to_thread(imap_fetch_all, imap_port, ALICE, PASSWORD)
                sent = await asyncio.to_thread(imap_fetch_all, imap_port, ALICE, PASSWORD, "Sent")
            assert len(inbox) == 1 and b"Subject: via 587" in inbox[0]
            assert len(sent) == 1 and b"Subject: via 587" in sent[0]
        finally:
            await smtp.stop(1.0)
