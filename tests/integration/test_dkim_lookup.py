"""verify_dkim (RFC 6376 §6.1) against a real DNS server on 127.0.0.1: a verdict per signature, top
first, keys fetched once per name, no lookup for a signature refused before its key is needed,
temperror when DNS fails; a big message takes the worker-thread path."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from mailstack.services.smtp.checks.dns import Resolver
from mailstack.services.smtp.checks.signatures import MAX_SIGNATURES, THREAD_ABOVE, DkimResult, verify_dkim

from tests.fixtures.dkim_signing import ed25519_key, hand_signed, rsa_key, sign
from tests.fixtures.dns_server import DnsServer

RSA = rsa_key(2048)
ED25519 = ed25519_key()
MESSAGE = b"From: Alice <alice@example.test>\r\nTo: bob@example.org\r\nSubject: hello\r\n\r\nThe body.\r\n"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.txt("sel._domainkey.example.test", RSA.record.decode())
        server.txt("ed._domainkey.example.test", ED25519.record.decode())
        server.txt("old._domainkey.example.test", "v=DKIM1; p=")
        server.servfail.add("sel._domainkey.broken.test")
        yield server


async def test_each_signature_gets_its_verdict_with_one_lookup_per_key(dns: DnsServer) -> None:
    content = sign(MESSAGE, RSA)
    content = sign(content, ED25519, selector=b"ed")
    content = sign(content, RSA)  # the same key again: no second lookup
    content = sign(content, RSA, selector=b"old")  # revoked
    content = sign(content, RSA, selector=b"nokey")  # nothing published
    verdicts = await verify_dkim(Resolver(dns.address, 2.0), content)
    assert [(v.result, v.selector, v.reason) for v in verdicts] == [
        (DkimResult.PERMERROR, "nokey", "no key published"),
        (DkimResult.PERMERROR, "old", "key revoked (empty p=)"),
        (DkimResult.PASS, "sel", ""),
        (DkimResult.PASS, "ed", ""),
        (DkimResult.PASS, "sel", ""),
    ]
    assert {v.domain for v in verdicts} == {"example.test"}
    assert all(len(v.signature) == 12 for v in verdicts)
    assert dns.asked("TXT") == 4


async def test_refused_signatures_are_not_looked_up(dns: DnsServer) -> None:
    now = int(time.time())
    tags = "v=1; a=rsa-sha256; c=relaxed/relaxed; s=sel; h=from:to:subject"
    content = hand_signed(MESSAGE, tags + f"; d=expired.test; t={now - 7200}; x={now - 3600}", RSA)
    content = hand_signed(content, tags + "; d=example.test; d=twice.test", RSA, b="AAAA")
    content = hand_signed(content, tags.replace("a=rsa-sha256", "a=rsa-sha1") + "; d=old.test", RSA, b="AAAA")
    verdicts = await verify_dkim(Resolver(dns.address, 2.0), content)
    assert [(v.result, v.domain) for v in verdicts] == [
        (DkimResult.PERMERROR, "old.test"),
        (DkimResult.PERMERROR, ""),  # its tags cannot be read: no domain to name
        (DkimResult.FAIL, "expired.test"),
    ]
    assert "expired" in verdicts[2].reason and "RFC 8301" in verdicts[0].reason
    assert dns.asked("TXT") == 0


async def test_a_dns_failure_is_a_temperror(dns: DnsServer) -> None:
    content = sign(MESSAGE, RSA, domain=b"broken.test")
    [verdict] = await verify_dkim(Resolver(dns.address, 2.0), content)
    assert (verdict.result, verdict.domain, verdict.reason) == (
        DkimResult.TEMPERROR,
        "broken.test",
        "key lookup failed",
    )


async def test_unsigned_mail_has_no_verdict_and_many_signatures_are_capped(dns: DnsServer) -> None:
    assert await verify_dkim(Resolver(dns.address, 2.0), MESSAGE) == []
    content = MESSAGE
    for _ in range(MAX_SIGNATURES + 3):
        content = sign(content, ED25519, selector=b"ed")
    verdicts = await verify_dkim(Resolver(dns.address, 2.0), content)
    assert [v.result for v in verdicts] == [DkimResult.PASS] * MAX_SIGNATURES


async def test_a_message_hashed_in_the_worker_thread_verifies(dns: DnsServer) -> None:
    big = MESSAGE + b"x" * 76 + b"\r\n" + (b"A line of a big attachment, base64 or not.\r\n" * (THREAD_ABOVE // 40))
    assert len(big) > THREAD_ABOVE
    verdicts = await verify_dkim(Resolver(dns.address, 2.0), sign(big, RSA, canon=(b"relaxed", b"relaxed")))
    assert [v.result for v in verdicts] == [DkimResult.PASS]
