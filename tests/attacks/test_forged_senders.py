"""Issue 13 §3 and §6: forged senders and sending limits, replayed against real servers.

The Send API is called over a real gRPC channel to an in-process mailstore; submission is smtplib
(STARTTLS + AUTH) against a real SMTP server in front of it. Every forgery must be refused and
leave nothing stored or queued; the legitimate variants (own address, alias, display names,
encoded words, no From on submission) must still go through.
"""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from mailstack.message import mime
from mailstack.services.common.tls import client_ssl_context
from mailstack.services.smtp.server import SmtpServer
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import send_pb2 as spb
from prometheus_client import REGISTRY

from tests.e2e.outbound_support import ALICE as LOCAL
from tests.e2e.outbound_support import OutboundStack, outbound_stack, structured
from tests.e2e.smtp_support import ALICE, BOB, BOB_PASSWORD, DOMAIN, PASSWORD, SmtpStack, smtp_stack
from tests.fixtures.mailstore import MailstoreProcess, fetch_body, identity_settings, open_client, settings_for

SHOP = "shop.example"
ORDERS = f"orders@{SHOP}"
CEO = "ceo@bank.example"
ALIAS = f"postmaster@{DOMAIN}"


# ---------------------------------------------------------------- Send API (token for shop.example)


async def local_messages(stack: OutboundStack) -> list[bytes]:
    request = pb.FetchMetadataRequest(account=LOCAL, mailbox="INBOX")
    metas = [m async for batch in stack.client.store.FetchMetadata(request) for m in batch.messages]
    return [await fetch_body(stack.client, LOCAL, "INBOX", m.uid) for m in metas]


def envelope_from(stored: bytes) -> list[str]:
    """The From addresses as IMAP ENVELOPE reports them (the mailstore's own parser)."""
    env = mime.parse_message(stored).envelope
    return [f"{a.mailbox.decode()}@{a.host.decode()}" for a in getattr(env, "from")]


async def refused_send(stack: OutboundStack, header: spb.SendHeader, raw: bytes = b"") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.send(header, raw)
    return refused.value


@pytest.mark.parametrize(
    "sender",
    [
        f"<{ORDERS}>{CEO}",  # the first: ENVELOPE and other parsers read a different address
        f"{ORDERS}, {CEO}",  # two From addresses
        f"{ORDERS}<{CEO}>",
        f"Orders <{ORDERS}>, {CEO}",
        CEO,
    ],
)
async def test_send_structured_forged_from_is_refused(tmp_path: Path, sender: str) -> None:
    async with outbound_stack(tmp_path, {}, from_domains=(SHOP,)) as stack:
        err = await refused_send(stack, spb.SendHeader(structured=structured(sender, [LOCAL])))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
        assert await local_messages(stack) == []


RAW_FORGERIES = {
    # the raw trick: ENVELOPE reads the first "From", a naive check the allowed one
    "space_before_colon": f"From : {CEO}\r\nFrom: {ORDERS}\r\nTo: {LOCAL}\r\nSubject: x\r\n\r\nbody\r\n",
    "tab_before_colon": f"From\t: {CEO}\r\nTo: {LOCAL}\r\nSubject: x\r\n\r\nbody\r\n",
    "two_from_fields": f"From: {ORDERS}\r\nFrom: {CEO}\r\nTo: {LOCAL}\r\nSubject: x\r\n\r\nbody\r\n",
    "two_addresses": f"From: {ORDERS}, {CEO}\r\nTo: {LOCAL}\r\nSubject: x\r\n\r\nbody\r\n",
    "forged_sender_field": f"From: {ORDERS}\r\nSender: {CEO}\r\nTo: {LOCAL}\r\nSubject: x\r\n\r\nbody\r\n",
    "angle_then_text": f"From: <{ORDERS}>{CEO}\r\nTo: {LOCAL}\r\nSubject: x\r\n\r\nbody\r\n",
    # a line that is no header field ends the header for one parser and not for another
    "broken_line_then_from": f"From: {ORDERS}\r\nX Bad Line: y\r\nFrom: {CEO}\r\nTo: {LOCAL}\r\n\r\nbody\r\n",
}


@pytest.mark.parametrize("name", sorted(RAW_FORGERIES))
async def test_send_raw_forged_from_is_refused(tmp_path: Path, name: str) -> None:
    async with outbound_stack(tmp_path, {}, from_domains=(SHOP,)) as stack:
        err = await refused_send(stack, spb.SendHeader(recipients=[LOCAL]), RAW_FORGERIES[name].encode())
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
        assert await local_messages(stack) == []


async def test_send_raw_without_from_is_refused(tmp_path: Path) -> None:
    async with outbound_stack(tmp_path, {}, from_domains=(SHOP,)) as stack:
        raw = f"To: {LOCAL}\r\nSubject: x\r\n\r\nbody\r\n".encode()
        err = await refused_send(stack, spb.SendHeader(recipients=[LOCAL], envelope_from=ORDERS), raw)
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED), err
        assert await local_messages(stack) == []


async def test_send_legitimate_senders_are_accepted(tmp_path: Path) -> None:
    async with outbound_stack(tmp_path, {}, from_domains=(SHOP,)) as stack:
        for sender in (ORDERS, f"Orders <{ORDERS}>", f'"Orders, Shop" <{ORDERS}>', f"Jörg Müller <{ORDERS}>",
                       f"=?utf-8?q?J=C3=B6rg?= <{ORDERS}>", f"ORDERS@{SHOP.upper()}"):  # fmt: skip
            await stack.send(spb.SendHeader(structured=structured(sender, [LOCAL])))
        raw = (f"From: =?utf-8?b?U2hvcCDDlg==?= <{ORDERS}>\r\nSender: news@{SHOP}\r\nTo: {LOCAL}\r\n"
               "Subject: raw\r\n\r\nbody\r\n").encode()  # fmt: skip
        await stack.send(spb.SendHeader(recipients=[LOCAL]), raw)
        stored = await local_messages(stack)
        assert len(stored) == 7
        assert [[a.lower() for a in envelope_from(m)] for m in stored] == [[ORDERS]] * 7


# ---------------------------------------------------------------- SMTP submission


def submit(
    stack: SmtpStack, envelope_sender: str, data: str, rcpts: list[str] | None = None,
    user: str = ALICE, password: str = PASSWORD,
) -> None:  # fmt: skip
    with smtplib.SMTP("localhost", stack.ports["submission"], timeout=30) as s:
        s.starttls(context=client_ssl_context(stack.cafile))
        s.login(user, password)
        s.sendmail(envelope_sender, rcpts or [BOB], data.encode())


def refused_submission(stack: SmtpStack, envelope_sender: str, data: str, rcpts: list[str] | None = None) -> str:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(stack, envelope_sender, data, rcpts)
    assert isinstance(refused.value.smtp_error, bytes)  # smtplib keeps the server's reply as bytes
    reply = f"{refused.value.smtp_code} {refused.value.smtp_error.decode()}"
    return reply


SUBMISSION_FORGERIES = {
    "other_domain": (ALICE, f"From: {CEO}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"),
    "other_account": (ALICE, f"From: Bob <{BOB}>\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"),
    "null_envelope_sender": ("<>", f"From: {CEO}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"),
    "space_before_colon": (ALICE, f"From : {CEO}\r\nFrom: {ALICE}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"),
    "two_addresses": (ALICE, f"From: {ALICE}, {CEO}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"),
    "two_from_fields": (ALICE, f"From: {ALICE}\r\nFrom: {CEO}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"),
    "forged_sender_field": (ALICE, f"From: {ALICE}\r\nSender: {CEO}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"),
    "angle_then_text": (ALICE, f"From: <{ALICE}>{CEO}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"),
}


@pytest.mark.parametrize("name", sorted(SUBMISSION_FORGERIES))
async def test_submission_forged_header_from_is_refused(tmp_path: Path, name: str) -> None:
    envelope_sender, data = SUBMISSION_FORGERIES[name]
    async with smtp_stack(tmp_path) as stack:
        reply = await asyncio.to_thread(refused_submission, stack, envelope_sender, data)
        assert reply.startswith("550 5.7.1 "), reply
        assert await stack.count(BOB) == 0


async def test_submission_forged_from_to_a_remote_recipient_is_not_queued(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        data = f"From: {CEO}\r\nTo: victim@remote.test\r\nSubject: x\r\n\r\nbody\r\n"
        reply = await asyncio.to_thread(refused_submission, stack, ALICE, data, ["victim@remote.test"])
        assert reply.startswith("550 5.7.1 "), reply
        with sqlite3.connect(tmp_path / "data" / "metadata.sqlite3") as db:  # nothing queued for the worker
            assert db.execute("SELECT COUNT(*) FROM outbound_messages").fetchone() == (0,)


async def test_submission_legitimate_senders_are_accepted(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        await stack.client.admin.AddAlias(pb.AddAliasRequest(address=ALIAS, account=ALICE))
        messages = [
            (ALICE, f"From: Alice <{ALICE}>\r\nTo: {BOB}\r\nSubject: own\r\n\r\nbody\r\n"),
            (ALICE, f"From: =?utf-8?q?Alice_=C3=84?= <{ALICE.upper()}>\r\nSubject: encoded\r\n\r\nbody\r\n"),
            (ALICE, f'From: "Alice, Postmaster" <{ALIAS}>\r\nSender: {ALICE}\r\nSubject: alias\r\n\r\nbody\r\n'),
            (ALIAS, f"From: {ALIAS}\r\nSubject: alias envelope\r\n\r\nbody\r\n"),
            # an MDN goes with the null sender (RFC 8098 §2.1) and the user's own From
            ("<>", f"From: {ALICE}\r\nSubject: read\r\n\r\nbody\r\n"),
            # no From at all is no forgery (RFC 6409 §8.1 lets the MSA leave or add it)
            (ALICE, "Subject: no from\r\n\r\nbody\r\n"),
        ]
        for envelope_sender, data in messages:
            await asyncio.to_thread(submit, stack, envelope_sender, data)
        assert await stack.count(BOB) == len(messages)


async def test_submission_from_check_can_be_relaxed(tmp_path: Path) -> None:
    forged = f"From: {CEO}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nbody\r\n"
    async with smtp_stack(tmp_path, submission_from_check="envelope") as stack:
        await asyncio.to_thread(submit, stack, ALICE, forged)  # header not checked
        with pytest.raises(smtplib.SMTPSenderRefused):  # the envelope still is
            await asyncio.to_thread(submit, stack, BOB, forged)
        assert await stack.count(BOB) == 1


async def test_local_submission_goes_through_submit_without_a_queue_row(tmp_path: Path) -> None:
    """Local-only submissions pass the mailstore's checks too (Submit, not Deliver); a local failure
    after RCPT's 250 reaches the sender as a DSN, and no queue row is left behind."""
    async with smtp_stack(tmp_path) as stack:
        await stack.client.admin.SetQuota(pb.SetQuotaRequest(name=BOB, quota_messages=1))
        data = f"From: {ALICE}\r\nSubject: fits\r\n\r\nbody\r\n"
        await asyncio.to_thread(submit, stack, ALICE, data)
        await asyncio.to_thread(submit, stack, ALICE, data)  # Bob is full now
        assert await stack.count(BOB) == 1
        [dsn] = await stack.inbox(ALICE)
        assert b"multipart/report" in dsn and b"5.2.2" in dsn
        with sqlite3.connect(tmp_path / "data" / "metadata.sqlite3") as db:  # only the DSN's row
            assert db.execute("SELECT COUNT(*) FROM outbound_messages WHERE client LIKE 'smtp:%'").fetchone() == (0,)


# ---------------------------------------------------------------- sending limits


def metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_submission_rate_limit_per_account(tmp_path: Path) -> None:
    data = f"From: {ALICE}\r\nSubject: burst\r\n\r\nbody\r\n"
    async with smtp_stack(tmp_path, submission_rate_messages=3, sending_rate_window=2) as stack:
        before = metric("mailstack_sending_refused_total", {"api": "submission", "reason": "rate"})
        for _ in range(3):
            await asyncio.to_thread(submit, stack, ALICE, data)
        reply = await asyncio.to_thread(refused_submission, stack, ALICE, data)
        assert reply.startswith("450 4.7.1 "), reply  # temporary: a real client retries later
        assert metric("mailstack_sending_refused_total", {"api": "submission", "reason": "rate"}) == before + 1
        # Per account: Bob is not held back by Alice's burst.
        await asyncio.to_thread(
            submit, stack, BOB, f"From: {BOB}\r\nSubject: b\r\n\r\nbody\r\n", [ALICE], BOB, BOB_PASSWORD
        )
        assert await stack.count(BOB) == 3
        # The window slides: after it, Alice may send again (bounded wait).
        deadline = time.monotonic() + 10
        while True:
            await asyncio.sleep(0.5)
            try:
                await asyncio.to_thread(submit, stack, ALICE, data)
                break
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_code == 450 and time.monotonic() < deadline, exc
        assert await stack.count(BOB) == 4


async def test_submission_rate_limit_counts_recipients(tmp_path: Path) -> None:
    data = f"From: {ALICE}\r\nSubject: many\r\n\r\nbody\r\n"
    async with smtp_stack(tmp_path, submission_rate_recipients=3) as stack:
        await asyncio.to_thread(submit, stack, ALICE, data, [BOB, ALICE])
        reply = await asyncio.to_thread(refused_submission, stack, ALICE, data, [BOB, ALICE])
        assert reply.startswith("450 4.7.1 "), reply
        await asyncio.to_thread(submit, stack, ALICE, data, [BOB])  # the third recipient still fits
        assert await stack.count(BOB) == 2


async def test_send_rate_limit_per_token(tmp_path: Path) -> None:
    async with outbound_stack(tmp_path, {}, from_domains=(SHOP,), send_rate_messages=2) as stack:
        before = metric("mailstack_sending_refused_total", {"api": "send", "reason": "rate"})
        header = spb.SendHeader(structured=structured(ORDERS, [LOCAL]))
        for _ in range(2):
            await stack.send(header)
        err = await refused_send(stack, header)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert metric("mailstack_sending_refused_total", {"api": "send", "reason": "rate"}) == before + 1
        other = await stack.admin.CreateToken(spb.CreateTokenRequest(name="other", from_domains=[SHOP]))
        requests = iter([spb.SendRequest(header=header)])
        await stack.sender.Send(requests, metadata=(("authorization", f"Bearer {other.secret}"),))
        assert len(await local_messages(stack)) == 3


def plain_submit(port: int, data: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, [BOB], data.encode())


@pytest.mark.slow
async def test_checks_and_limits_hold_in_the_mailstore_process_across_smtp_replicas(tmp_path: Path) -> None:
    """The multi-process shape: the mailstore is its own OS process (configured by environment),
    two SMTP frontends in front of it. The limit is the mailstore's, so it spans both replicas."""
    proc = MailstoreProcess(tmp_path / "store", {"MAILSTACK_SUBMISSION_RATE_MESSAGES": "2"})
    await asyncio.to_thread(proc.start)
    servers: list[SmtpServer] = []
    client = open_client(proc.address, proc.data_dir, proc.send_address)
    try:
        for name, password in ((ALICE, PASSWORD), (BOB, BOB_PASSWORD)):
            await client.admin.CreateAccount(pb.CreateAccountRequest(name=name, password=password))
        ports = []
        for replica in ("a", "b"):
            settings = settings_for(tmp_path / replica, smtp_port=0, submission_port=0, submissions_port=0,
                                    mailstore_addr=proc.address, allow_plaintext_auth=True,
                                    **identity_settings(proc.data_dir, "smtp"))  # fmt: skip
            server = SmtpServer(settings)
            await server.start()
            servers.append(server)
            ports.append(int(dict(server.listeners)["submission"].rsplit(":", 1)[1]))
        own = f"From: {ALICE}\r\nSubject: ok\r\n\r\nbody\r\n"
        with pytest.raises(smtplib.SMTPDataError) as forged:  # refused before it counts
            await asyncio.to_thread(plain_submit, ports[1], f"From : {CEO}\r\n{own}")
        assert forged.value.smtp_code == 550, forged.value
        await asyncio.to_thread(plain_submit, ports[0], own)
        await asyncio.to_thread(plain_submit, ports[1], own)
        with pytest.raises(smtplib.SMTPDataError) as limited:
            await asyncio.to_thread(plain_submit, ports[0], own)
        error = limited.value.smtp_error
        assert limited.value.smtp_code == 450 and isinstance(error, bytes) and error.startswith(b"4.7.1"), limited.value
        status = await client.store.GetMailboxStatus(pb.MailboxStatusRequest(account=BOB, name="INBOX"))
        assert status.messages == 2
    finally:
        await client.channel.close()
        for server in servers:
            await server.stop(1.0)
        await asyncio.to_thread(proc.stop)
    assert "sending refused api=submission reason=rate" in proc.log_tail(200)
    assert "sending refused api=submission reason=header" in proc.log_tail(200)
