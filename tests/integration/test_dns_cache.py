"""The checks' DNS cache, against a real DNS server: an answer is asked for once while its TTL
runs (every message of a sender would otherwise cost a lookup), a name that did not exist is
asked again (no SOA came with the NXDOMAIN: RFC 2308 §5 says not to keep it), a failure is never
kept, and the cache stays within its size."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from mailstack.services.smtp.checks.dns import AnswerCache, DnsTempError, Resolver

from tests.fixtures.dns_server import DnsServer


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer({"sender.example": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1"]}}) as server:
        yield server


def test_answer_is_asked_once_within_its_ttl(dns: DnsServer) -> None:
    resolver = Resolver(dns.address, 2.0)

    async def run() -> None:
        for _ in range(20):
            assert await resolver.txt("sender.example") == [b"v=spf1 -all"]
            assert await resolver.addresses("Sender.Example", ipv6=False) == ["192.0.2.1"]

    asyncio.run(run())
    assert (dns.asked("TXT"), dns.asked("A")) == (1, 1)


def test_unknown_name_is_asked_again_and_found_once_published(dns: DnsServer) -> None:
    resolver = Resolver(dns.address, 2.0)
    assert asyncio.run(resolver.txt("_dmarc.sender.example")) == []
    dns.txt("_dmarc.sender.example", "v=DMARC1; p=reject")
    assert asyncio.run(resolver.txt("_dmarc.sender.example")) == [b"v=DMARC1; p=reject"]


def test_failure_is_not_kept(dns: DnsServer) -> None:
    resolver = Resolver(dns.address, 0.3)
    dns.servfail.add("sender.example")
    with pytest.raises(DnsTempError):
        asyncio.run(resolver.txt("sender.example"))
    dns.servfail.clear()
    assert asyncio.run(resolver.txt("sender.example")) == [b"v=spf1 -all"]


def test_kept_answer_outlives_an_outage_until_its_ttl(dns: DnsServer) -> None:
    resolver = Resolver(dns.address, 0.3)
    assert asyncio.run(resolver.txt("sender.example")) == [b"v=spf1 -all"]
    dns.silent = True
    assert asyncio.run(resolver.txt("sender.example")) == [b"v=spf1 -all"]
    with pytest.raises(DnsTempError):
        asyncio.run(resolver.txt("other.example"))


def test_cache_expiry_and_bound() -> None:
    cache = AnswerCache(2)
    now = time.time()
    cache.put(("a", 16), ["old"], now - 1)  # already expired: not kept
    assert cache.get(("a", 16)) is None
    cache.put(("a", 16), ["a"], now + 60)
    cache.put(("b", 16), ["b"], now + 60)
    assert cache.get(("a", 16)) == ["a"]  # now the most recently used
    cache.put(("c", 16), ["c"], now + 60)
    assert (cache.get(("a", 16)), cache.get(("b", 16)), cache.get(("c", 16))) == (["a"], None, ["c"])
    cache.put(("d", 16), ["d"], now + 0.05)
    time.sleep(0.1)
    assert cache.get(("d", 16)) is None
