"""Async DNS for the inbound checks: dnspython's asyncio resolver with a timeout per lookup and
its in-process LRU cache (TTL-bound, NXDOMAIN cached too).

Answers are reduced to what the checks need: a list (empty for NXDOMAIN and NODATA, which
RFC 7208 §4.6.4 calls a "void lookup") or `DnsTempError` for a timeout or SERVFAIL."""

from __future__ import annotations

import ipaddress

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

MAX_RECORDS = 64  # records of one answer looked at; DNS itself bounds a response to 64 KiB


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
        self._resolver.cache = dns.resolver.LRUCache(cache_size)

    async def _answer(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[object]:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return []  # not a domain name: nothing there
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.YXDOMAIN:
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as err:
            raise DnsTempError(f"{name} {dns.rdatatype.to_text(rdtype)}: {type(err).__name__}") from None
        except dns.exception.DNSException as err:  # a malformed answer is the server's fault: try later
            raise DnsTempError(f"{name} {dns.rdatatype.to_text(rdtype)}: {type(err).__name__}") from None
        if answer.rrset is None:
            return []
        return list(answer.rrset)[:MAX_RECORDS]

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
