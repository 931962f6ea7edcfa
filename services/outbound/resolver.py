"""Where mail for a domain goes: MX hosts in preference order (RFC 5321 §5.1).

`dns` asks DNS (dnspython): MX records by preference; no MX -> the domain's own A/AAAA (the
implicit MX); a null MX refuses mail (RFC 7505). `static:DOMAIN=HOST:PORT,...` is a fixed map
for tests and closed setups ('*' matches any domain); tests never make real DNS queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SMTP_PORT = 25


@dataclass(frozen=True, slots=True)
class MxHost:
    host: str
    port: int = SMTP_PORT


class ResolveError(Exception):
    def __init__(self, reply: str, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


class Resolver(Protocol):
    async def mx_hosts(self, domain: str) -> list[MxHost]:
        """Hosts to try in order; raises ResolveError."""
        ...


class StaticResolver:
    def __init__(self, routes: dict[str, list[MxHost]]) -> None:
        self.routes = {k.lower(): v for k, v in routes.items()}

    @classmethod
    def parse(cls, spec: str) -> StaticResolver:
        routes: dict[str, list[MxHost]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            domain, _, target = item.partition("=")
            host, _, port = target.rpartition(":")
            if not domain or not host or not port.isdigit():
                raise ValueError(f"outbound_resolver: expected DOMAIN=HOST:PORT, got {item!r}")
            routes.setdefault(domain.strip(), []).append(MxHost(host.strip("[]"), int(port)))
        return cls(routes)

    async def mx_hosts(self, domain: str) -> list[MxHost]:
        hosts = self.routes.get(domain.lower()) or self.routes.get("*")
        if not hosts:
            raise ResolveError(f"550 5.1.2 no route to domain {domain}", permanent=True)
        return hosts


class DnsResolver:
    def __init__(self, lifetime: float = 30.0) -> None:
        import dns.asyncresolver

        self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = lifetime

    async def mx_hosts(self, domain: str) -> list[MxHost]:
        import dns.exception
        import dns.resolver

        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise ResolveError(f"550 5.1.2 domain {domain} does not exist", permanent=True) from None
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        except dns.exception.DNSException as exc:
            raise ResolveError(f"451 4.4.3 DNS lookup of {domain} failed: {exc}", permanent=False) from None
        records = sorted(answer, key=lambda r: r.preference)  # type: ignore[attr-defined,unused-ignore]
        exchanges = [str(r.exchange).rstrip(".") for r in records]  # type: ignore[attr-defined,unused-ignore]
        if exchanges == [""]:  # RFC 7505: "MX 0 ." -- the domain accepts no mail
            raise ResolveError(f"556 5.1.10 domain {domain} accepts no mail (null MX)", permanent=True)
        return [MxHost(e) for e in exchanges if e]

    async def _implicit_mx(self, domain: str) -> list[MxHost]:
        import dns.exception

        for rdtype in ("A", "AAAA"):
            try:
                await self._resolver.resolve(domain, rdtype)
                return [MxHost(domain)]
            except dns.exception.DNSException:
                continue
        raise ResolveError(f"550 5.1.2 domain {domain} has no MX and no address", permanent=True)


def open_resolver(spec: str) -> Resolver:
    if spec == "dns":
        return DnsResolver()
    if spec.startswith("static:"):
        return StaticResolver.parse(spec.removeprefix("static:"))
    raise ValueError(f"outbound_resolver: expected dns or static:..., got {spec!r}")
