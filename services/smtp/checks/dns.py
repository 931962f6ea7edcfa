"""Async DNS for the inbound checks: dnspython's asyncio resolver with a timeout per lookup, and
in front of it a cache of the reduced answers (TTL-bound, NXDOMAIN and NODATA for NEGATIVE_TTL at
most), so that a lookup repeated for every message of a sender costs a dict hit rather than
dnspython's name parsing and resolution set-up (most of the checks' CPU per message).

Answers are reduced to what the checks need: a list (empty for NXDOMAIN and NODATA, which
RFC 7208 §4.6.4 calls a "void lookup") or `DnsTempError` for a timeout or SERVFAIL."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

MAX_RECORDS = 64  # records of one answer looked at; DNS itself bounds a response to 64 KiB
NEGATIVE_TTL = 300.0  # seconds "no such name / no such record" is believed (RFC 2308 caps by the SOA too)


class DnsTempError(Exception):
    """The lookup failed for now (timeout, SERVFAIL, no server): RFC 7208 "temperror"."""


def parse_servers(text: str) -> list[dns.nameserver.Nameserver]:
    """'HOST[:PORT],...' (IPv6 as [::1]:53) -> nameservers; empty -> [] (the system's resolv.conf)."""
    servers: list[dns.nameserver.Nameserver] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port = item, 53
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:
            host, _, number = item.partition(":")
            port = int(number)
        ipaddress.ip_address(host)  # a resolver is named by address (ValueError otherwise)
        servers.append(dns.nameserver.Do53Nameserver(host, port))
    return servers


class Resolver:
    """One per SMTP process: every check shares its cache."""

    def __init__(self, servers: str, timeout: float, cache_size: int = 10000) -> None:
        nameservers = parse_servers(servers)
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = nameservers
        self._resolver.lifetime = timeout  # the whole lookup, retries and TCP fallback included
        self._resolver.timeout = timeout
        self._answers = AnswerCache(cache_size)

    async def _answer(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[object]:
        key = (name.lower(), rdtype)
        cached = self._answers.get(key)
        if cached is not None:
            return cached
        records, expires = await self._lookup(name, rdtype)
        self._answers.put(key, records, expires)
        return records

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[list[object], float]:
        """The records (at most MAX_RECORDS) and until when they hold; temporary failures raise."""
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return [], time.time() + NEGATIVE_TTL  # not a domain name: nothing there
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN) as err:
            return [], time.time() + _negative_ttl(err, qname)
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as err:
            raise DnsTempError(f"{name} {dns.rdatatype.to_text(rdtype)}: {type(err).__name__}") from None
        except dns.exception.DNSException as err:  # a malformed answer is the server's fault: try later
            raise DnsTempError(f"{name} {dns.rdatatype.to_text(rdtype)}: {type(err).__name__}") from None
        if answer.rrset is None:  # NODATA: the SOA's negative TTL, as dnspython computed it
            return [], min(answer.expiration, time.time() + NEGATIVE_TTL)
        return list(answer.rrset)[:MAX_RECORDS], answer.expiration

    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record's character-strings joined (RFC 7208 §3.3). A DNS message is at most
        64 KiB, which bounds them all; each reader bounds what it accepts (SPF: MAX_RECORD_CHARS)."""
        return [b"".join(rdata.strings) for rdata in await self._answer(name, dns.rdatatype.TXT)]  # type: ignore[attr-defined]

    async def addresses(self, name: str, ipv6: bool) -> list[str]:
        rdtype = dns.rdatatype.AAAA if ipv6 else dns.rdatatype.A
        return [rdata.address for rdata in await self._answer(name, rdtype)]  # type: ignore[attr-defined]

    async def mx(self, name: str) -> list[str]:
        """Exchange names (without the trailing dot), lowest preference first."""
        records = sorted(await self._answer(name, dns.rdatatype.MX), key=lambda r: r.preference)  # type: ignore[attr-defined]
        return [r.exchange.to_text(omit_final_dot=True) for r in records]  # type: ignore[attr-defined]

    async def ptr(self, ip: str) -> list[str]:
        name = dns.reversename.from_address(ip).to_text()
        return [r.target.to_text(omit_final_dot=True) for r in await self._answer(name, dns.rdatatype.PTR)]  # type: ignore[attr-defined]


def _negative_ttl(err: dns.exception.DNSException, qname: dns.name.Name) -> float:
    """How long "no such name" holds: the SOA's TTL and minimum (RFC 2308 §5), at most NEGATIVE_TTL;
    an answer without a SOA is not kept (§5: it SHOULD NOT be cached)."""
    if not isinstance(err, dns.resolver.NXDOMAIN):
        return NEGATIVE_TTL
    try:
        response = err.response(qname)  # type: ignore[no-untyped-call]
    except (KeyError, IndexError):
        return 0.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum, NEGATIVE_TTL))
    return 0.0


class AnswerCache:
    """(name, type) -> records until their expiry; least recently used dropped beyond `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int], tuple[float, list[object]]] = OrderedDict()

    def get(self, key: tuple[str, int]) -> list[object] | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= time.time():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: tuple[str, int], records: list[object], expires: float) -> None:
        if expires <= time.time():
            return
        self._items[key] = (expires, records)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
