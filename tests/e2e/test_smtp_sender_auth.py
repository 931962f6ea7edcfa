"""Sender authentication on the MX port with real signed mail: keys, SPF and DMARC records published
by a DNS server the test runs on 127.0.0.1, messages signed by dkimpy, sent over SMTP sockets, and
the stored Authentication-Results field read back with `authres` (RFC 7208, 6376, 7489, 8617, 8601)."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import authres
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mailstack.message.headers import field_value, header_end, split_fields
from mailstack.v1 import mailstore_pb2 as pb
from prometheus_client import REGISTRY

from tests.e2e.smtp_support import ALICE, PASSWORD, RawSmtp, SmtpStack, smtp_stack
from tests.fixtures.dns_server import DnsServer
from tests.fixtures.mailstore import fetch_body

AUTHSERV = "mx.example.test"
SELECTOR = b"sel"


@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    """(private key PEM for dkimpy, public key for the DNS record)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


@pytest.fixture
def dns(key: tuple[bytes, str]) -> Iterator[DnsServer]:
    with DnsServer() as server:
        # signed.test: everything in order, DMARC p=reject
        server.txt("signed.test", "v=spf1 ip4:127.0.0.1 -all")
        server.txt("sel._domainkey.signed.test", f"v=DKIM1; k=rsa; p={key[1]}")
        server.txt("_dmarc.signed.test", "v=DMARC1; p=reject; rua=mailto:d@signed.test")
        server.txt("mail.signed.test", "v=spf1 a -all")
        server.add("mail.signed.test", "A", "127.0.0.1")
        # quarantined.test: p=quarantine, nobody may send for it
        server.txt("quarantined.test", "v=spf1 -all")
        server.txt("_dmarc.quarantined.test", "v=DMARC1; p=quarantine")
        # relaxed.test: p=none, SPF softfail; its DKIM key is the same one
        server.txt("relaxed.test", "v=spf1 ~all")
        server.txt("sel._domainkey.relaxed.test", f"v=DKIM1; k=rsa; p={key[1]}")
        server.txt("_dmarc.relaxed.test", "v=DMARC1; p=none")
        # forwarder.test seals ARC sets with the same key
        server.txt("sel._domainkey.forwarder.test", f"v=DKIM1; k=rsa; p={key[1]}")
        yield server


@asynccontextmanager
async def stack(tmp_path: Path, dns: DnsServer, mode: str = "enforce", **overrides: object) -> AsyncIterator[SmtpStack]:
    async with smtp_stack(
        tmp_path, smtp_sender_auth=mode, dns_servers=dns.address, authserv_id=AUTHSERV, **overrides
    ) as running:
        yield running


def message(sender_header: str, subject: str = "hello", extra: bytes = b"") -> bytes:
    return (
        extra
        + f"From: {sender_header}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        "Message-ID: <1@example.test>\r\n\r\nThe body.\r\n.dot line\r\n".encode()
    )


def signed(content: bytes, key: tuple[bytes, str], domain: bytes = b"signed.test") -> bytes:
    signature = dkim.sign(content, SELECTOR, domain, key[0], include_headers=[b"from", b"to", b"subject"])
    return bytes(signature) + content


async def send(stack: SmtpStack, sender: str, content: bytes, helo: str = "mail.signed.test") -> str:
    smtp = await RawSmtp.connect(stack.ports["smtp"])
    try:
        await smtp.greet(helo)
        assert (await smtp.cmd(f"MAIL FROM:<{sender}>")).startswith("250")
        assert (await smtp.cmd(f"RCPT TO:<{ALICE}>")).startswith("250")
        assert (await smtp.cmd("DATA")).startswith("354")
        stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in content.split(b"\r\n"))
        return await smtp.cmd(stuffed.removesuffix(b"\r\n") + b"\r\n.")
    finally:
        await smtp.close()


async def stored(stack: SmtpStack, mailbox: str = "INBOX") -> list[bytes]:
    request = pb.FetchMetadataRequest(account=ALICE, mailbox=mailbox)
    metas = [m async for batch in stack.client.store.FetchMetadata(request) for m in batch.messages]
    return [await fetch_body(stack.client, ALICE, mailbox, m.uid) for m in metas]


def auth_results(stored_message: bytes) -> list[authres.AuthenticationResultsHeader]:
    block = stored_message[: header_end(stored_message, 0, len(stored_message))]
    fields = [field_value(text) for name, text in split_fields(block) if name.lower() == b"authentication-results"]
    return [authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {f.decode()}") for f in fields]


def ours(stored_message: bytes) -> dict[str, list[authres.core.AuthenticationResult]]:
    """Our one Authentication-Results field, its results by method."""
    mine = [h for h in auth_results(stored_message) if h.authserv_id.lower() == AUTHSERV]
    assert len(mine) == 1, stored_message[:600]
    by_method: dict[str, list[authres.core.AuthenticationResult]] = {}
    for result in mine[0].results:
        by_method.setdefault(result.method, []).append(result)
    return by_method


def prop(result: authres.core.AuthenticationResult, name: str) -> str:
    return next(str(p.value) for p in result.properties if f"{p.type}.{p.name}" == name)


# ---------------------------------------------------------------- pass


async def test_aligned_spf_and_dkim_pass(tmp_path: Path, dns: DnsServer, key: tuple[bytes, str]) -> None:
    async with stack(tmp_path, dns) as running:
        reply = await send(running, "bounce@signed.test", signed(message("News <news@signed.test>"), key))
        assert reply.startswith("250 2.0.0"), reply
        [copy] = await stored(running)
        results = ours(copy)
        spf = {prop(r, "smtp.mailfrom") if r.properties[0].name == "mailfrom" else "helo": r for r in results["spf"]}
        assert spf["bounce@signed.test"].result == "pass"
        assert spf["helo"].result == "pass"
        [dkim_result] = results["dkim"]
        assert (dkim_result.result, prop(dkim_result, "header.d"), prop(dkim_result, "header.s")) == (
            "pass", "signed.test", "sel",
        )  # fmt: skip
        [dmarc] = results["dmarc"]
        assert (dmarc.result, prop(dmarc, "header.from")) == ("pass", "signed.test")
        assert results["arc"][0].result == "none"
        assert REGISTRY.get_sample_value("mailstack_smtp_auth_results_total", {"method": "dmarc", "result": "pass"})
        # RFC 8601 §5: ours comes right below our own Received field, above the message's fields
        assert copy.index(b"Received:") < copy.index(b"Authentication-Results:") < copy.index(b"DKIM-Signature:")


async def test_dkim_alone_passes_dmarc_when_spf_fails(tmp_path: Path, dns: DnsServer, key: tuple[bytes, str]) -> None:
    # Forwarded mail: the forwarder's IP fails SPF, the intact signature still passes DMARC (relaxed).
    dns.clear("signed.test", "TXT")
    dns.txt("signed.test", "v=spf1 ip4:198.51.100.1 -all")
    async with stack(tmp_path, dns) as running:
        reply = await send(running, "bounce@signed.test", signed(message("news@sub.signed.test"), key))
        assert reply.startswith("250"), reply
        results = ours((await stored(running))[0])
        assert results["spf"][0].result == "fail"
        assert results["dkim"][0].result == "pass"
        assert results["dmarc"][0].result == "pass"  # sub.signed.test aligns with signed.test (relaxed)


# ---------------------------------------------------------------- fail, softfail, none


async def test_tampered_body_fails_dkim_and_softfail_is_reported(
    tmp_path: Path, dns: DnsServer, key: tuple[bytes, str]
) -> None:
    content = signed(message("a@relaxed.test"), key, b"relaxed.test").replace(b"The body.", b"The b0dy.")
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "a@relaxed.test", content, helo="client.unknown.test")).startswith("250")
        results = ours((await stored(running))[0])
        assert results["spf"][0].result == "softfail"
        assert results["spf"][1].result == "none"  # the HELO name has no SPF record
        assert results["dkim"][0].result == "fail"
        assert results["dmarc"][0].result == "fail"  # p=none: annotated, delivered to INBOX


async def test_nothing_published_is_none(tmp_path: Path, dns: DnsServer) -> None:
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "x@plain.test", message("x@plain.test"), helo="[127.0.0.1]")).startswith("250")
        results = ours((await stored(running))[0])
        assert [r.result for r in results["spf"]] == ["none"]  # an address literal HELO is not checked
        assert results["dkim"][0].result == "none"
        assert results["dmarc"][0].result == "none"


# ---------------------------------------------------------------- DMARC policies


async def test_dmarc_reject_refuses_with_550(tmp_path: Path, dns: DnsServer) -> None:
    async with stack(tmp_path, dns) as running:
        reply = await send(running, "attacker@evil.test", message("CEO <ceo@signed.test>"), helo="evil.test")
        assert reply.startswith("550 5.7.1"), reply
        assert "DMARC" in reply and "signed.test" in reply
        assert await stored(running) == []


async def test_second_from_field_does_not_escape_dmarc(tmp_path: Path, dns: DnsServer, key: tuple[bytes, str]) -> None:
    # A signed From of the attacker's own, plus a forged one: every From domain is evaluated.
    content = b"From: ceo@signed.test\r\n" + signed(message("me@relaxed.test"), key, b"relaxed.test")
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "me@relaxed.test", content)).startswith("550 5.7.1")


async def test_dmarc_quarantine_delivers_to_junk(tmp_path: Path, dns: DnsServer) -> None:
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "x@quarantined.test", message("x@quarantined.test"))).startswith("250")
        assert await stored(running) == []
        [junk] = await stored(running, "Junk")
        assert ours(junk)["dmarc"][0].result == "fail"


async def test_quarantine_finds_the_junk_mailbox_by_its_special_use(tmp_path: Path, dns: DnsServer) -> None:
    # A client may call its \\Junk mailbox "Spam" (RFC 6154): quarantine goes there, not to the INBOX.
    async with stack(tmp_path, dns) as running:
        await running.client.store.DeleteMailbox(pb.DeleteMailboxRequest(account=ALICE, name="Junk"))
        create = pb.CreateMailboxRequest(account=ALICE, name="Spam", special_use=pb.SPECIAL_USE_JUNK)
        await running.client.store.CreateMailbox(create)
        await running.client.store.CreateMailbox(pb.CreateMailboxRequest(account=ALICE, name="junk-ish"))
        assert (await send(running, "x@quarantined.test", message("x@quarantined.test"))).startswith("250")
        assert await stored(running) == []
        [copy] = await stored(running, "Spam")
        assert ours(copy)["dmarc"][0].result == "fail"


async def test_quarantine_without_a_junk_mailbox_goes_to_the_inbox(tmp_path: Path, dns: DnsServer) -> None:
    async with stack(tmp_path, dns) as running:
        await running.client.store.DeleteMailbox(pb.DeleteMailboxRequest(account=ALICE, name="Junk"))
        assert (await send(running, "x@quarantined.test", message("x@quarantined.test"))).startswith("250")
        [copy] = await stored(running)  # never lost: the mailstore falls back to INBOX
        assert ours(copy)["dmarc"][0].result == "fail"


async def test_pct_zero_applies_the_milder_policy(tmp_path: Path, dns: DnsServer) -> None:
    # RFC 7489 §6.6.4: pct=0 samples every failure out: reject becomes quarantine
    dns.clear("_dmarc.signed.test", "TXT")
    dns.txt("_dmarc.signed.test", "v=DMARC1; p=reject; pct=0")
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "attacker@evil.test", message("ceo@signed.test"))).startswith("250")
        assert len(await stored(running, "Junk")) == 1


async def test_annotate_mode_delivers_what_enforce_refuses(tmp_path: Path, dns: DnsServer) -> None:
    async with stack(tmp_path, dns, mode="annotate") as running:
        assert (await send(running, "attacker@evil.test", message("ceo@signed.test"))).startswith("250")
        assert (await send(running, "x@quarantined.test", message("x@quarantined.test"))).startswith("250")
        inbox = await stored(running)
        assert [ours(m)["dmarc"][0].result for m in inbox] == ["fail", "fail"]


# ---------------------------------------------------------------- DNS failures


async def test_dns_down_is_a_temporary_refusal(tmp_path: Path, dns: DnsServer) -> None:
    async with stack(tmp_path, dns, dns_timeout_ms=300) as running:
        dns.silent = True
        reply = await send(running, "bounce@signed.test", message("news@signed.test"))
        assert reply.startswith("451 4.7.5"), reply
        assert await stored(running) == []
        dns.silent = False  # the sender's retry succeeds once DNS answers
        assert (await send(running, "bounce@signed.test", message("news@signed.test"))).startswith("250")


async def test_dmarc_record_servfail_is_temperror(tmp_path: Path, dns: DnsServer) -> None:
    dns.servfail.add("_dmarc.signed.test")
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "bounce@signed.test", message("news@signed.test"))).startswith("451 4.7.5")
    async with stack(tmp_path / "annotate", dns, mode="annotate") as running:
        assert (await send(running, "bounce@signed.test", message("news@signed.test"))).startswith("250")
        assert ours((await stored(running))[0])["dmarc"][0].result == "temperror"


async def test_slow_dns_is_cut_off_by_the_check_deadline(tmp_path: Path, dns: DnsServer) -> None:
    # Every answer takes 0.3 s, within the lookup timeout; an SPF chain of ten includes would take
    # over 3 s: the one-second deadline of each check makes it a temperror, and the aligned
    # temperror makes DMARC undecided (451) rather than failed.
    for i in range(10):
        dns.txt(f"i{i}.slow.test", f"v=spf1 include:i{i + 1}.slow.test -all")
    dns.txt("slow.test", "v=spf1 include:i0.slow.test -all")
    dns.txt("_dmarc.slow.test", "v=DMARC1; p=reject")
    async with stack(tmp_path, dns, smtp_auth_timeout=1) as running:
        dns.delay = 0.3
        started = asyncio.get_running_loop().time()
        reply = await send(running, "x@slow.test", message("x@slow.test"), helo="[127.0.0.1]")
        assert reply.startswith("451 4.7.5"), reply
        assert asyncio.get_running_loop().time() - started < 3.0  # the whole chain would take 3.6 s


# ---------------------------------------------------------------- forged and hostile input


async def test_forged_authentication_results_with_our_id_are_removed(tmp_path: Path, dns: DnsServer) -> None:
    forged = (
        b"Authentication-Results: MX.EXAMPLE.TEST; dmarc=pass header.from=signed.test\r\n"
        b"Authentication-Results: (comment) mx.example.test;\r\n\tdkim=pass\r\n"
        b"Authentication-Results: upstream.example; spf=pass smtp.mailfrom=x@plain.test\r\n"
    )
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "x@plain.test", message("x@plain.test", extra=forged))).startswith("250")
        [copy] = await stored(running)
        headers = auth_results(copy)
        assert sorted(h.authserv_id.lower() for h in headers) == [AUTHSERV, "upstream.example"]
        assert ours(copy)["dmarc"][0].result == "none"


async def test_malformed_and_many_signatures_are_bounded(
    tmp_path: Path, dns: DnsServer, key: tuple[bytes, str]
) -> None:
    good = signed(message("a@relaxed.test"), key, b"relaxed.test")
    garbage = b"DKIM-Signature: v=1; a=rsa-sha256; d=relaxed.test; b=; bh=;;;; h\r\n"
    many = b"".join(
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=d{i}.test; s=s; h=from; bh=AA==; b=AA==\r\n".encode()
        for i in range(40)
    )
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "a@relaxed.test", garbage + good)).startswith("250")
        assert (await send(running, "a@relaxed.test", many + good)).startswith("250")
        first, second = await stored(running)
        assert [r.result for r in ours(first)["dkim"]] == ["permerror", "pass"]
        assert len(ours(second)["dkim"]) == 5  # the first five signatures, no more
        assert dns.asked("TXT") < 40
        # An ARC chain longer than anyone forwards is refused without a lookup of its keys.
        seals = b"".join(f"ARC-Seal: i={i}; a=rsa-sha256; cv=pass; d=f{i}.test; s=s; b=AA==\r\n".encode()
                         for i in range(1, 30))  # fmt: skip
        asked = dns.asked("TXT")
        assert (await send(running, "a@relaxed.test", seals + good)).startswith("250")
        assert ours((await stored(running))[2])["arc"][0].result == "fail"
        assert dns.asked("TXT") - asked < 10


async def test_submission_is_not_checked(tmp_path: Path, dns: DnsServer) -> None:
    async with stack(tmp_path, dns) as running:
        asked = dns.asked()

        def submit() -> None:
            context = ssl.create_default_context(cafile=running.cafile)
            context.check_hostname = False
            with smtplib.SMTP("127.0.0.1", running.ports["submission"], timeout=30) as client:
                client.starttls(context=context)
                client.login(ALICE, PASSWORD)
                client.sendmail(ALICE, [ALICE], message(ALICE))

        await asyncio.to_thread(submit)
        [copy] = await stored(running)
        assert auth_results(copy) == [] and dns.asked() == asked


# ---------------------------------------------------------------- ARC (RFC 8617)


def sealed(content: bytes, key: tuple[bytes, str]) -> bytes:
    """The message as a forwarder seals it: its own Authentication-Results, then an ARC set (i=1)."""
    with_results = b"Authentication-Results: forwarder.test; dkim=pass header.d=relaxed.test\r\n" + content
    arc_set = dkim.arc_sign(with_results, SELECTOR, b"forwarder.test", key[0], b"forwarder.test")
    return b"".join(arc_set) + with_results


async def test_arc_chain_pass_and_fail(tmp_path: Path, dns: DnsServer, key: tuple[bytes, str]) -> None:
    good = sealed(signed(message("a@relaxed.test"), key, b"relaxed.test"), key)
    broken = good.replace(b"The body.", b"Changed after sealing.")
    async with stack(tmp_path, dns) as running:
        assert (await send(running, "a@relaxed.test", good)).startswith("250")
        assert (await send(running, "a@relaxed.test", broken)).startswith("250")
        first, second = await stored(running)
        assert ours(first)["arc"][0].result == "pass"
        assert ours(second)["arc"][0].result == "fail"
