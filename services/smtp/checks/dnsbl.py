"""DNS blocklists: the client's address looked up in each configured zone (RFC 5782).

A listing is an A record in 127.0.0.0/8; 127.255.255.0/24 is what some lists answer to say
they refuse the querier, not that the client is listed, so it does not count. A list that
cannot be asked counts as not listing (fail open: a broken list must not stop all mail)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from mailstack.services.smtp.checks.dns import DnsTempError, Resolver

log = logging.getLogger("mailstack.smtp")
MAX_ZONES = 16


@dataclass(frozen=True)
class Blocklist:
    zone: str
    weight: int


def parse_zones(text: str) -> list[Blocklist]:
    """'zone[=weight],...' (weight 1 when left out)."""
    lists: list[Blocklist] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        zone, _, weight = item.partition("=")
        if not weight.strip().lstrip("-").isdigit() and weight:
            raise ValueError(f"smtp_dnsbl_zones: bad weight in {item!r}")
        lists.append(Blocklist(zone.strip().lower().removesuffix("."), int(weight) if weight else 1))
    if len(lists) > MAX_ZONES:
        raise ValueError(f"smtp_dnsbl_zones: at most {MAX_ZONES} zones")
    return lists


def query_name(ip: str, zone: str) -> str:
    """RFC 5782 §2.1 (IPv4: octets reversed) and §2.4 (IPv6: nibbles reversed)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(reversed(str(address).split("."))) + "." + zone
    return ".".join(reversed(address.exploded.replace(":", ""))) + "." + zone


def _is_listing(answer: str) -> bool:
    address = ipaddress.ip_address(answer)
    return address in ipaddress.ip_network("127.0.0.0/8") and address not in ipaddress.ip_network("127.255.255.0/24")


class Dnsbl:
    def __init__(self, resolver: Resolver, lists: list[Blocklist], threshold: int) -> None:
        self.resolver = resolver
        self.lists = lists
        self.threshold = threshold

    async def _listed(self, ip: str, blocklist: Blocklist) -> bool:
        try:
            answers = await self.resolver.addresses(query_name(ip, blocklist.zone), ipv6=False)
        except DnsTempError as err:
            log.warning("dnsbl %s could not be asked: %s", blocklist.zone, err)
            return False
        return any(_is_listing(a) for a in answers)

    async def refusal(self, ip: str) -> str | None:
        """554 5.7.1 naming the lists when their weights together reach the threshold."""
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return None  # no address to look up (a UNIX socket in tests)
        listed = await asyncio.gather(*(self._listed(ip, b) for b in self.lists))
        hits = [b for b, found in zip(self.lists, listed, strict=True) if found]
        if sum(b.weight for b in hits) < self.threshold or not hits:
            return None
        names = ", ".join(b.zone for b in hits)
        return f"554 5.7.1 Service unavailable; client [{ip}] blocked using {names}"
