"""Forwarding end to end: mail for alice arrives on the inbound MX and a copy goes through the real
outbound worker to a remote MX (a local sink) with an SRS0 envelope sender and an ARC seal that
dkimpy verifies; a bounce to the SRS address comes back and is relayed to the original sender."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import dkim
import grpc
import pytest
from mailstack.message import dkim_sign
from mailstack.message.srs import Srs
from mailstack.services.smtp.server import SmtpServer
from mailstack.v1 import mailstore_pb2 as pb

from tests.e2e.outbound_support import ALICE, DOMAIN, OutboundStack, ScriptedMx, outbound_stack, scripted_mx
from tests.e2e.smtp_support import RawSmtp

pytestmark = pytest.mark.slow

SECRET = "srs-test-secret"
HOSTNAME = "mx.example.test"
FORWARD_TO = "alice.elsewhere@remote.test"
ORIGIN = "bob@origin.test"


@dataclass
class Forwarder:
    stack: OutboundStack
    mx: ScriptedMx
    smtp_port: int
    dns_txt: bytes  # the DKIM key record the test "publishes"

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sel._domainkey.example.test.", name
        return self.dns_txt

    async def count(self, account: str = ALICE) -> int:
        request = pb.MailboxStatusRequest(account=account, name="INBOX")
        return int((await self.stack.client.store.GetMailboxStatus(request)).messages)


@asynccontextmanager
async def forwarder(tmp_path: Path, **overrides: object) -> AsyncIterator[Forwarder]:
    private, public = dkim_sign.generate_key(1024)
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(private)
    mx = ScriptedMx()
    async with scripted_mx(mx) as mx_port:
        settings: dict[str, object] = {"srs_secret": SECRET, "hostname": HOSTNAME,
                                       "dkim_keys": f"{DOMAIN}=sel:{key_file}", **overrides}  # fmt: skip
        routes = {"remote.test": mx_port, "origin.test": mx_port}
        async with outbound_stack(tmp_path, routes, (DOMAIN,), **settings) as stack:
            smtp = SmtpServer(stack.settings.replace(mailstore_addr=stack.mailstore.address, smtp_port=0,
                                                     submission_port=0, submissions_port=0))  # fmt: skip
            await smtp.start()
            try:
                await stack.start_worker()
                port = int(dict(smtp.listeners)["smtp"].rsplit(":", 1)[1])
                yield Forwarder(stack, mx, port, b"v=DKIM1; k=rsa; p=" + public.encode())
            finally:
                await smtp.stop(1.0)


async def send(port: int, sender: str, rcpt: str, data: bytes) -> str:
    smtp = await RawSmtp.connect(port)
    await smtp.greet("mail.origin.test")
    assert (await smtp.cmd(f"MAIL FROM:<{sender}>")).startswith("250")
    reply = await smtp.cmd(f"RCPT TO:<{rcpt}>")
    if reply.startswith("250"):
        assert (await smtp.cmd("DATA")).startswith("354")
        reply = await smtp.cmd(data + b".")
    await smtp.close()
    return reply


MESSAGE = (
    f"From: Bob <{ORIGIN}>\r\nTo: {ALICE}\r\nSubject: forward me\r\n"
    "Date: Mon, 07 Dec 2026 12:00:00 +0000\r\nMessage-ID: <f1@origin.test>\r\n\r\nSee you at noon.\r\n"
).encode()


@pytest.mark.parametrize("keep_copy", [False, True])
async def test_a_forwarded_copy_leaves_with_srs_and_a_valid_arc_seal(tmp_path: Path, keep_copy: bool) -> None:
    async with forwarder(tmp_path) as fw:
        forward = pb.Forward(address=ALICE, targets=[FORWARD_TO], keep_copy=keep_copy)
        assert (await fw.stack.client.admin.SetForward(forward)).targets == [FORWARD_TO]
        assert (await send(fw.smtp_port, ORIGIN, ALICE, MESSAGE)).startswith("250")
        await fw.stack.wait_for(lambda: len(fw.mx.received) == 1)
        got = fw.mx.received[0]
        assert got.recipients == [FORWARD_TO]
        # SRS0=HASH=TT=origin.test=bob@example.test, which only our secret reverses.
        local, _, domain = got.sender.rpartition("@")
        assert local.startswith("SRS0=") and local.endswith("=origin.test=bob") and domain == DOMAIN, got.sender
        assert Srs(SECRET).reverse(got.sender) == ORIGIN
        assert Srs("another-secret").reverse(got.sender) is None
        # The seal verifies with our published key and records what our MX saw.
        result, chain, _ = dkim.arc_verify(got.data, dnsfunc=fw.dnsfunc)
        assert result == b"pass", chain
        assert chain[0]["as-domain"] == DOMAIN.encode() and chain[0]["aar-value"].startswith(
            b"i=1; " + HOSTNAME.encode()
        )
        assert got.data.endswith(b"\r\n\r\nSee you at noon.\r\n")
        assert await fw.count() == (1 if keep_copy else 0)


async def test_a_bounce_to_the_srs_address_goes_back_to_the_original_sender(tmp_path: Path) -> None:
    async with forwarder(tmp_path) as fw:
        srs_address = Srs(SECRET).forward(ORIGIN, DOMAIN)
        bounce = b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered Mail\r\n\r\nno such user\r\n"
        assert (await send(fw.smtp_port, "", srs_address, bounce)).startswith("250")
        await fw.stack.wait_for(lambda: len(fw.mx.received) == 1)
        got = fw.mx.received[0]
        assert got.recipients == [ORIGIN] and got.sender in ("", "<>")
        # A forged or foreign SRS address is no recipient: no open relay through SRS.
        forged = Srs("not-our-secret").forward(ORIGIN, DOMAIN)
        assert (await send(fw.smtp_port, "", forged, bounce)).startswith("550 5.1.1")
        assert (await send(fw.smtp_port, "", f"SRS0=xxxx=AA=origin.test=bob@{DOMAIN}", bounce)).startswith("550")
        # A valid SRS local part at a domain that is not ours: no relay either.
        elsewhere = srs_address.rpartition("@")[0] + "@elsewhere.test"
        assert (await send(fw.smtp_port, "", elsewhere, bounce)).startswith("554 5.7.1")
        assert len(fw.mx.received) == 1


async def test_a_refused_forward_bounces_back_to_the_original_sender(tmp_path: Path) -> None:
    """The remote MX refuses the forwarded copy: the outbound worker's DSN goes to the SRS sender,
    which is ours, and from there, reversed, to the sender of the original message."""
    async with forwarder(tmp_path) as fw:
        fw.mx.replies.append("550 5.1.1 <alice.elsewhere@remote.test>: no such user")
        await fw.stack.client.admin.SetForward(pb.Forward(address=ALICE, targets=[FORWARD_TO]))
        assert (await send(fw.smtp_port, ORIGIN, ALICE, MESSAGE)).startswith("250")
        await fw.stack.wait_for(lambda: len(fw.mx.received) == 1)
        dsn = fw.mx.received[0]
        assert dsn.recipients == [ORIGIN] and dsn.sender in ("", "<>")
        assert b"Final-Recipient: rfc822; alice.elsewhere@remote.test" in dsn.data
        assert b"Subject: forward me" in dsn.data  # the original headers come with the report
        assert fw.mx.data_attempts == 2 and await fw.count() == 0


async def test_forward_administration_refuses_what_cannot_work(tmp_path: Path) -> None:
    async with forwarder(tmp_path) as fw:
        admin = fw.stack.client.admin
        for bad in (
            pb.Forward(address=f"nobody@{DOMAIN}", targets=[FORWARD_TO]),  # no such account or alias
            pb.Forward(address=ALICE, targets=[ALICE]),  # a local target (an alias does that)
            pb.Forward(address=ALICE, targets=["not an address"]),
            pb.Forward(address=ALICE, targets=[f"t{i}@remote.test" for i in range(11)]),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.SetForward(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        await admin.AddAlias(pb.AddAliasRequest(address=f"sales@{DOMAIN}", account=ALICE))
        await admin.SetForward(pb.Forward(address=f"sales@{DOMAIN}", targets=[FORWARD_TO], keep_copy=True))
        listed = (await admin.ListForwards(pb.ListForwardsRequest())).forwards
        assert [(f.address, list(f.targets), f.keep_copy) for f in listed] == [(f"sales@{DOMAIN}", [FORWARD_TO], True)]
        # Only mail for the alias is forwarded (and a subaddress of it); alice's own is not.
        assert (await send(fw.smtp_port, ORIGIN, ALICE, MESSAGE)).startswith("250")
        assert (await send(fw.smtp_port, ORIGIN, f"sales+x@{DOMAIN}", MESSAGE)).startswith("250")
        await fw.stack.wait_for(lambda: len(fw.mx.received) == 1)
        await asyncio.sleep(0.5)
        assert len(fw.mx.received) == 1 and await fw.count() == 2
        await admin.SetForward(pb.Forward(address=f"sales@{DOMAIN}"))  # no targets: removed
        assert list((await admin.ListForwards(pb.ListForwardsRequest())).forwards) == []
        # A forward goes with its alias or account: a later one of that name does not inherit it.
        await admin.SetForward(pb.Forward(address=f"sales@{DOMAIN}", targets=[FORWARD_TO]))
        await admin.SetForward(pb.Forward(address=ALICE, targets=[FORWARD_TO]))
        await admin.DeleteAlias(pb.DeleteAliasRequest(address=f"sales@{DOMAIN}"))
        await admin.DeleteAccount(pb.DeleteAccountRequest(name=ALICE))
        assert list((await admin.ListForwards(pb.ListForwardsRequest())).forwards) == []


async def test_without_an_srs_secret_forwarding_is_refused(tmp_path: Path) -> None:
    async with forwarder(tmp_path, srs_secret="") as fw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fw.stack.client.admin.SetForward(pb.Forward(address=ALICE, targets=[FORWARD_TO]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "srs_secret" in (refused.value.details() or "")
