"""SPF: check_host() of RFC 7208 over an async DNS (see dns.py), with every limit of §4.6.4.

Written here rather than taken from pyspf, whose lookups are synchronous (ADR 0033). Not
implemented: the "exp" explanation (only used in a rejection text we do not send) and the
"p" macro, which expands to "unknown" as §7.3 permits."""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Protocol

from mailstack.services.smtp.checks.dns import DnsTempError

MAX_DNS_TERMS = 10  # include, a, mx, ptr, exists, redirect (§4.6.4)
MAX_VOID_LOOKUPS = 2  # lookups answered NXDOMAIN or NODATA (§4.6.4)
MAX_MX_NAMES = 10  # MX names one "mx" may look up (§4.6.4)
MAX_PTR_NAMES = 10  # PTR names one "ptr" may validate (§5.5)
MAX_RECORD_CHARS = 4096  # a longer SPF record is refused (permerror) before any parsing
MAX_DOMAIN = 253

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Records, networks and client addresses are parsed once per process, not once per message: a
# sender's record comes back with each of its messages (a PermError is not cached: raised again).
PARSE_CACHE = 4096


class SpfResult(enum.StrEnum):
    # RFC 7208 §2.6
    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


QUALIFIERS = {"+": SpfResult.PASS, "-": SpfResult.FAIL, "~": SpfResult.SOFTFAIL, "?": SpfResult.NEUTRAL}
DNS_MECHANISMS = {"include", "a", "mx", "ptr", "exists"}
MECHANISMS = DNS_MECHANISMS | {"all", "ip4", "ip6"}


class SpfDns(Protocol):
    async def txt(self, name: str) -> list[bytes]: ...
    async def addresses(self, name: str, ipv6: bool) -> list[str]: ...
    async def mx(self, name: str) -> list[str]: ...
    async def ptr(self, ip: str) -> list[str]: ...


class PermError(Exception):
    """The published record is wrong or exceeds a limit (RFC 7208 §2.6.7)."""


@dataclass(frozen=True)
class SpfVerdict:
    result: SpfResult
    domain: str  # the domain whose policy was checked
    reason: str = ""  # why, for the Authentication-Results comment


@dataclass(frozen=True)
class Term:
    qualifier: str
    name: str  # mechanism or modifier name, lowercase
    argument: str  # domain-spec, network or modifier value ("" when absent)
    cidr4: int | None = None
    cidr6: int | None = None


@dataclass
class SpfContext:
    """One check_host() evaluation with its includes and redirects: the limits count across them."""

    dns: SpfDns
    ip: IpAddress
    sender: str
    helo: str
    dns_terms: int = 0
    void_lookups: int = 0

    def count_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise PermError(f"more than {MAX_DNS_TERMS} DNS lookups")

    def count_void(self, found: list[str] | list[bytes]) -> None:
        if not found:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")


def valid_domain(domain: str) -> bool:
    """A multi-label name with labels of 1..63 octets (§4.3)."""
    domain = domain.removesuffix(".")
    labels = domain.split(".")
    if len(domain) > MAX_DOMAIN or len(labels) < 2:
        return False
    return all(0 < len(label) <= 63 for label in labels)


async def check_host(dns: SpfDns, ip: str, domain: str, sender: str, helo: str) -> SpfVerdict:
    """RFC 7208 §4: `domain` is the MAIL FROM's domain, or the HELO name for the HELO identity."""
    domain = domain.lower().removesuffix(".")
    address = _client_address(ip)
    if address is None:
        return SpfVerdict(SpfResult.NONE, domain, "no client IP address")  # a UNIX socket
    context = SpfContext(dns, address, sender, helo)
    try:
        result, reason = await _evaluate(context, domain)
    except PermError as err:
        return SpfVerdict(SpfResult.PERMERROR, domain, str(err))
    except DnsTempError as err:
        return SpfVerdict(SpfResult.TEMPERROR, domain, str(err))
    return SpfVerdict(result, domain, reason)


@functools.lru_cache(maxsize=PARSE_CACHE)
def _client_address(ip: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # §5: an IPv4-mapped client is an IPv4 client
    return address


async def _evaluate(context: SpfContext, domain: str) -> tuple[SpfResult, str]:
    if not valid_domain(domain):
        return SpfResult.NONE, f"{domain!r} is not a domain"
    record = await _record(context.dns, domain)
    if record is None:
        return SpfResult.NONE, f"no SPF record at {domain}"
    terms = parse_record(record)
    for term in terms:
        if term.name in MECHANISMS and await _matches(context, term, domain):
            return QUALIFIERS[term.qualifier], f"{domain}: matched {term.name}"
    redirect = next((t for t in terms if t.name == "redirect"), None)
    if redirect is None:
        return SpfResult.NEUTRAL, f"{domain}: no mechanism matched"
    # §6.1: redirect counts as a DNS term; a target without a record is a permerror.
    context.count_term()
    target = expand(redirect.argument, context, domain)
    result, reason = await _evaluate(context, target)
    if result == SpfResult.NONE:
        raise PermError(f"redirect to {target}, which has no SPF record")
    return result, reason


async def _record(dns: SpfDns, domain: str) -> str | None:
    """The one "v=spf1" TXT record (§4.5): none -> None, several -> permerror."""
    found = [r for r in await dns.txt(domain) if re.match(rb"(?i)v=spf1(?: |$)", r)]
    if not found:
        return None
    if len(found) > 1:
        raise PermError(f"{domain} publishes {len(found)} SPF records")
    if len(found[0]) > MAX_RECORD_CHARS:
        raise PermError(f"{domain}: SPF record over {MAX_RECORD_CHARS} characters")
    try:
        return found[0].decode("ascii")
    except UnicodeDecodeError:
        raise PermError(f"{domain}: SPF record is not ASCII") from None


_MODIFIER = re.compile(r"([a-z][a-z0-9._-]*)=(.*)", re.IGNORECASE | re.DOTALL)
_MECHANISM = re.compile(r"([+\-~?]?)([a-z][a-z0-9._-]*)(?::(.*?))?(?:/(\d{1,3}))?(?://(\d{1,3}))?", re.I | re.S)


@functools.lru_cache(maxsize=PARSE_CACHE)
def parse_record(record: str) -> tuple[Term, ...]:
    """The terms after "v=spf1" (§4.6.1, §12); any unknown mechanism or a bad term is a permerror."""
    terms: list[Term] = []
    for word in record.split(" ")[1:]:
        if not word:
            continue
        modifier = _MODIFIER.fullmatch(word)
        if modifier is not None:
            terms.append(Term("", modifier.group(1).lower(), modifier.group(2)))
            continue
        terms.append(_mechanism(word))
    for name in ("redirect", "exp"):  # §6: each at most once
        if sum(t.name == name for t in terms) > 1:
            raise PermError(f"{name}= appears more than once")
    return tuple(terms)


def _mechanism(word: str) -> Term:
    match = _MECHANISM.fullmatch(word)
    if match is None or match.group(2).lower() not in MECHANISMS or match.group(3) == "":
        raise PermError(f"unknown or bad term {word[:40]!r}")
    qualifier, name, argument, cidr4, cidr6 = match.groups()
    term = Term(qualifier or "+", name.lower(), argument or "",
                int(cidr4) if cidr4 is not None else None, int(cidr6) if cidr6 is not None else None)  # fmt: skip
    if not _well_formed(term):
        raise PermError(f"bad term {word[:40]!r}")
    if term.name in ("ip4", "ip6"):
        _network(term)  # raises PermError when malformed
    return term


def _well_formed(term: Term) -> bool:
    """Arguments and prefix lengths each mechanism takes (§5)."""
    if term.name in ("include", "exists", "ip4", "ip6") and not term.argument:
        return False
    if term.name == "all" and term.argument:
        return False
    if (term.cidr4 is not None or term.cidr6 is not None) and term.name in ("all", "include", "exists", "ptr"):
        return False
    if term.cidr6 is not None and term.name in ("ip4", "ip6"):
        return False
    limit = 128 if term.name == "ip6" else 32  # ip6's prefix is read into cidr4 (one slash)
    return (term.cidr4 or 0) <= limit and (term.cidr6 or 0) <= 128


@functools.lru_cache(maxsize=PARSE_CACHE)
def _network(term: Term) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network of an ip4/ip6 mechanism; the prefix of ip6 is written with one slash."""
    prefix = term.cidr4 if term.cidr4 is not None else (32 if term.name == "ip4" else 128)
    try:
        address = ipaddress.ip_address(term.argument)
    except ValueError:
        raise PermError(f"bad address {term.argument[:40]!r}") from None
    if (term.name == "ip4") != isinstance(address, ipaddress.IPv4Address) or prefix > address.max_prefixlen:
        raise PermError(f"bad network {term.argument[:40]!r}")
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def _in_network(ip: IpAddress, address: str, term: Term) -> bool:
    """Whether `ip` is within the mechanism's prefix of `address` (a/mx dual-cidr-length)."""
    network = _host_network(address, term.cidr4 if ip.version == 4 else term.cidr6)
    return network is not None and ip in network


@functools.lru_cache(maxsize=PARSE_CACHE)
def _host_network(address: str, prefix: int | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The prefix of an A/AAAA answer (None: not an address of the family the prefix is for)."""
    other = ipaddress.ip_address(address)
    if prefix is not None and prefix > other.max_prefixlen:
        return None
    return ipaddress.ip_network(f"{other}/{prefix if prefix is not None else other.max_prefixlen}", strict=False)


async def _matches(context: SpfContext, term: Term, domain: str) -> bool:
    """RFC 7208 §5: whether one mechanism matches the client."""
    if term.name == "all":
        return True
    if term.name in ("ip4", "ip6"):
        return context.ip in _network(term)
    context.count_term()
    target = expand(term.argument, context, domain) if term.argument else domain
    if term.name == "include":
        return await _include(context, target)
    if term.name == "exists":
        found = await context.dns.addresses(target, ipv6=False)  # §5.7: always an A lookup
        context.count_void(found)
        return bool(found)
    if term.name == "ptr":
        return await _ptr(context, target)
    names = [target] if term.name == "a" else await _mx_names(context, target)
    return await _any_address(context, names, term, void_counts=term.name == "a")


async def _include(context: SpfContext, target: str) -> bool:
    """§5.2: pass matches; fail, softfail and neutral do not; none and permerror are permerrors."""
    result, _ = await _evaluate(context, target)
    if result == SpfResult.TEMPERROR:
        raise DnsTempError(f"include:{target}")
    if result in (SpfResult.NONE, SpfResult.PERMERROR):
        raise PermError(f"include:{target} has no usable SPF record")
    return result == SpfResult.PASS


async def _mx_names(context: SpfContext, target: str) -> list[str]:
    names = await context.dns.mx(target)
    context.count_void(names)
    if len(names) > MAX_MX_NAMES:
        raise PermError(f"{target} has more than {MAX_MX_NAMES} MX records")
    return names


async def _any_address(context: SpfContext, names: list[str], term: Term, void_counts: bool) -> bool:
    ipv6 = context.ip.version == 6
    for name in names:
        found = await context.dns.addresses(name, ipv6)
        if void_counts:
            context.count_void(found)
        if any(_in_network(context.ip, address, term) for address in found):
            return True
    return False


async def _ptr(context: SpfContext, target: str) -> bool:
    """§5.5: a validated reverse name equal to or under the target domain (discouraged, still valid)."""
    names = (await context.dns.ptr(str(context.ip)))[:MAX_PTR_NAMES]
    context.count_void(names)
    for name in names:
        name = name.lower()
        if name != target and not name.endswith("." + target):
            continue
        addresses = await context.dns.addresses(name, context.ip.version == 6)
        if any(ipaddress.ip_address(a) == context.ip for a in addresses):
            return True
    return False


# ---------------------------------------------------------------- macros (§7)

_MACRO = re.compile(r"%(?:\{([a-zA-Z])(\d*)(r?)([.\-+,/_=]*)\}|(.))", re.S)


def _letter_value(letter: str, context: SpfContext, domain: str) -> str:
    local, _, sender_domain = context.sender.rpartition("@")
    ip = context.ip
    if letter == "i" and ip.version == 6:
        return ".".join(ip.exploded.replace(":", ""))  # §7.3: dot-separated nibbles
    values = {
        "s": context.sender, "l": local or "postmaster", "o": sender_domain, "d": domain, "i": str(ip),
        "p": "unknown", "v": "in-addr" if ip.version == 4 else "ip6", "h": context.helo,
    }  # fmt: skip
    if letter not in values:  # c, r, t are for exp= only
        raise PermError(f"macro %{{{letter}}} not allowed here")
    return values[letter]


def _transform(value: str, digits: str, reverse: str, delimiters: str) -> str:
    parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
    if reverse:
        parts.reverse()
    if digits:
        keep = int(digits)
        if keep == 0:
            raise PermError("macro keeps zero labels")
        parts = parts[-keep:]
    return ".".join(parts)


def expand(spec: str, context: SpfContext, domain: str) -> str:
    """A domain-spec with its macros expanded, shortened to 253 characters from the left (§7.3)."""

    def one(match: re.Match[str]) -> str:
        letter, digits, reverse, delimiters, escape = match.groups()
        if escape is not None:
            literal = {"%": "%", "_": " ", "-": "%20"}.get(escape)
            if literal is None:
                raise PermError(f"bad macro %{escape}")
            return literal
        return _transform(_letter_value(letter.lower(), context, domain), digits, reverse, delimiters)

    if spec.endswith("%"):
        raise PermError("macro string ends in %")
    expanded = _MACRO.sub(one, spec).lower().removesuffix(".")
    while len(expanded) > MAX_DOMAIN and "." in expanded:
        expanded = expanded.split(".", 1)[1]
    return expanded
