"""The Send API end to end: one local recipient (read over IMAP) and two remote ones (a real SMTP
receiver on loopback as their MX), DKIM, idempotency, raw input, token checks."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import sys
from pathlib import Path

import dkim
import grpc
import pytest
from mailstack.message.dkim_sign import generate_key
from mailstack.services.common.grpc_client import error_detail
from mailstack.v1 import mailstore_pb2 as pb
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

DELIVERED = spb.DELIVERY_DELIVERED


async def test_structured_send_to_one_local_and_two_remote_recipients_dkim_signed(tmp_path: Path) -> None:
    pem, public = generate_key(1024)  # small key: fast in tests; production keys are 2048 bits
    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(pem)
    mx = ScriptedMx()
    async with (
        scripted_mx(mx) as port,
        outbound_stack(
            tmp_path, {"remote.test": port, "other.test": port}, dkim_keys=f"example.test=s1:{key_path}"
        ) as stack,
    ):
        await stack.start_worker()
        message = structured(
            "Shop Bot <shop@example.test>",
            [ALICE, "Bob Brünhild <bob@remote.test>"],
            subject="Your order ✓",
            cc=["carol@other.test"],
            text="Thank you, Jürgen.\n",
            html="<p>Thank you, <b>Jürgen</b>.</p>",
            attachments=[spb.Attachment(filename="Rechnung-Größe.pdf", content_type="application/pdf", data=b"%PDF")],
        )
        reply = await stack.send(spb.SendHeader(structured=message))
        states = {r.recipient: (r.state, r.local) for r in reply.recipients}
        assert states == {
            ALICE: (DELIVERED, True),
            "bob@remote.test": (spb.DELIVERY_QUEUED, False),
            "carol@other.test": (spb.DELIVERY_QUEUED, False),
        }
        status = await stack.wait_status(reply.message_id, lambda s: all(r.state == DELIVERED for r in s.recipients))
        assert {r.recipient: r.attempts for r in status.recipients if not r.local} == {
            "bob@remote.test": 1, "carol@other.test": 1}  # fmt: skip

        # One transaction per domain; each a valid, signed MIME message.
        assert sorted(r.recipients[0] for r in mx.received) == ["bob@remote.test", "carol@other.test"]
        for received in mx.received:
            assert received.sender == "shop@example.test"
            parsed = received.message
            assert parsed["Subject"] == "Your order ✓"
            assert parsed["Message-ID"].strip("<>") == reply.rfc5322_message_id
            assert parsed.get_content_type() == "multipart/mixed"
            body = parsed.get_body(("plain",))
            assert body is not None and body.get_content().replace("\r\n", "\n") == "Thank you, Jürgen.\n"
            html = parsed.get_body(("html",))
            assert html is not None and "<b>Jürgen</b>" in html.get_content()
            [attachment] = list(parsed.iter_attachments())
            assert attachment.get_filename() == "Rechnung-Größe.pdf" and attachment.get_content() == b"%PDF"
            assert b"Bcc" not in received.data
            record = f"v=DKIM1; k=rsa; p={public}".encode()

            def dns(name: bytes, timeout: int = 5, record: bytes = record) -> bytes:
                assert name == b"s1._domainkey.example.test."
                return record

            assert dkim.verify(received.data, dnsfunc=dns)

        # The local recipient reads the same message over IMAP.
        async with running_imap(stack) as imap_port:
            [stored] = await asyncio.to_thread(imap_fetch_all, imap_port, ALICE, PASSWORD)
        local = email.message_from_bytes(stored, policy=email.policy.default)
        assert local["Subject"] == "Your order ✓" and local["DKIM-Signature"] is not None


async def test_idempotency_key_sends_once_and_raw_input(tmp_path: Path) -> None:
    mx = ScriptedMx()
    async with scripted_mx(mx) as port, outbound_stack(tmp_path, {"remote.test": port}) as stack:
        raw = (
            b"From: Shop <shop@example.test>\r\nTo: bob@remote.test\r\nBcc: hidden@remote.test\r\n"
            b"Subject: raw\r\n\r\nbody\r\n"
        )
        header = spb.SendHeader(idempotency_key="order-42", size=len(raw))
        first = await stack.send(header, raw)
        second = await stack.send(header, raw)
        assert second.duplicate and second.message_id == first.message_id and not first.duplicate
        assert sorted(r.recipient for r in first.recipients) == ["bob@remote.test", "hidden@remote.test"]
        await stack.start_worker()
        await stack.wait_status(first.message_id, lambda s: all(r.state == DELIVERED for r in s.recipients))
        [received] = mx.received
        assert sorted(received.recipients) == ["bob@remote.test", "hidden@remote.test"]
        assert b"hidden" not in received.data  # RFC 5322 §3.6.3: Bcc is not sent
        assert b"Message-ID: <" in received.data and b"Date: " in received.data


async def test_token_checks(tmp_path: Path) -> None:
    async with outbound_stack(tmp_path, {}) as stack:
        ok = structured("shop@example.test", ["x@remote.test"])
        for token in ("", "mst_wrong"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stack.send(spb.SendHeader(structured=ok), token=token)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            detail = error_detail(refused.value)
            assert detail is not None and detail.reason == pb.AUTH_FAILED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.send(spb.SendHeader(structured=structured("ceo@bank.test", ["x@remote.test"])))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not send from ceo@bank.test" in (refused.value.details() or "")
        # The envelope sender is checked as well as the From header.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.send(spb.SendHeader(structured=ok, envelope_from="bounce@bank.test"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.sender.GetSendStatus(spb.GetSendStatusRequest(message_id="x"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A revoked token stops working at once.
        await stack.admin.RevokeToken(spb.RevokeTokenRequest(name="shop"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.send(spb.SendHeader(structured=ok))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def mailstack_cli(*args: str, data_dir: str = "") -> tuple[int, str]:
    """The CLI; with data_dir, it finds the mailstore's admin identity there (DATA_DIR/grpc)."""
    env = {**os.environ, "MAILSTACK_DATA_DIR": data_dir} if data_dir else None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailstack",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_cli_token_create_list_revoke_and_dkim_keygen(tmp_path: Path) -> None:
    async with outbound_stack(tmp_path, {}) as stack:
        address = ["--mailstore", stack.mailstore.address]
        code, out = await mailstack_cli("token", "create", *address, "--name", "tickets", "--from-domain",
                                        "example.test", "--json", data_dir=stack.settings.data_dir)  # fmt: skip
        assert code == 0, out
        secret = json.loads(out)["token"]
        reply = await stack.send(spb.SendHeader(structured=structured("help@example.test", [ALICE])), token=secret)
        assert reply.recipients[0].state == DELIVERED
        code, out = await mailstack_cli("token", "list", *address, data_dir=stack.settings.data_dir)
        assert code == 0 and "tickets" in out and "example.test" in out and secret not in out
        code, out = await mailstack_cli("token", "revoke", "tickets", *address, data_dir=stack.settings.data_dir)
        assert code == 0, out
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.send(spb.SendHeader(structured=structured("help@example.test", [ALICE])), token=secret)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    key = tmp_path / "k.pem"
    code, out = await mailstack_cli(
        "dkim", "keygen", "shop.test", "--selector", "s2", "--bits", "1024", "--out", str(key)
    )
    assert code == 0, out
    assert 's2._domainkey.shop.test. IN TXT (\n    "v=DKIM1; k=rsa; p=' in out and key.stat().st_mode & 0o777 == 0o600
