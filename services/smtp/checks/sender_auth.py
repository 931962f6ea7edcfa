"""Sender authentication of one inbound message: SPF, DKIM, ARC and DMARC, the one
Authentication-Results field that reports them, and what the DMARC policy asks for.

Runs at DATA (DKIM and DMARC need the message; SPF could run at MAIL, but one place keeps the
verdict whole). Each check has the same deadline; one that misses it counts as a temperror."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mailstack.message.addresses import parse_addresses
from mailstack.message.auth_results import MethodResult, header_field, without_forged
from mailstack.message.headers import field_value, header_end, split_fields
from mailstack.services.common.metrics import SMTP_AUTH_RESULTS
from mailstack.services.smtp.checks import dmarc as dmarc_check
from mailstack.services.smtp.checks.dmarc import DmarcResult, DmarcVerdict
from mailstack.services.smtp.checks.dns import Resolver
from mailstack.services.smtp.checks.signatures import ArcVerdict, DkimResult, DkimVerdict, verify_arc, verify_dkim
from mailstack.services.smtp.checks.spf import SpfResult, SpfVerdict, check_host, valid_domain

T = TypeVar("T")
MAX_FROM_DOMAINS = 5  # From domains a message may make us evaluate DMARC for


@dataclass(frozen=True)
class AuthVerdict:
    header: bytes  # the Authentication-Results field to prepend
    content: bytes  # the message without forged Authentication-Results fields
    refusal: str | None = None  # the SMTP reply when the message is not taken
    reason: str = ""  # for counters and logs ("dmarc_reject", "auth_temperror", "dmarc_quarantine")
    mailbox: str = ""  # "" = the usual delivery, else the quarantine mailbox


@dataclass(frozen=True)
class Policy:
    authserv_id: str
    enforce: bool  # refuse / quarantine as DMARC asks; else only annotate
    quarantine_mailbox: str
    deadline: float  # seconds each check may take, its DNS lookups together


def from_domains(content: bytes) -> list[str]:
    """The domains of the RFC5322.From addresses, every From field counted (RFC 7489 §6.6.1)."""
    block = content[: header_end(content, 0, len(content))]
    domains: list[str] = []
    for name, text in split_fields(block):
        if name.lower() != b"from":
            continue
        for address in parse_addresses(field_value(text)):
            domain = (address.host or b"").decode("utf-8", "replace").lower()
            if domain and domain not in domains and valid_domain(domain):
                domains.append(domain)
    return domains[:MAX_FROM_DOMAINS]


def _is_domain(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return valid_domain(name)
    return False


class SenderAuth:
    def __init__(self, resolver: Resolver, policy: Policy) -> None:
        self.resolver = resolver
        self.policy = policy

    async def _within(self, work: Awaitable[T], late: T) -> T:
        try:
            async with asyncio.timeout(self.policy.deadline):  # no task of its own, unlike wait_for
                return await work
        except TimeoutError:
            return late

    async def _spf(self, ip: str, domain: str, sender: str, helo: str) -> SpfVerdict:
        late = SpfVerdict(SpfResult.TEMPERROR, domain, "checks took too long")
        return await self._within(check_host(self.resolver, ip, domain, sender, helo), late)

    async def check(self, client_ip: str, helo: str, mail_from: str, content: bytes) -> AuthVerdict:
        helo = helo.lower().removesuffix(".")
        helo_known = _is_domain(helo)
        none_helo = SpfVerdict(SpfResult.NONE, "", "HELO is not a domain name")  # and not reported
        mfrom_domain = mail_from.rpartition("@")[2].lower()
        spf_helo, spf_mfrom, dkim, arc = await asyncio.gather(
            self._spf(client_ip, helo, f"postmaster@{helo}", helo) if helo_known else _value(none_helo),
            self._spf(client_ip, mfrom_domain, mail_from, helo) if mail_from else _value(None),
            self._within(verify_dkim(self.resolver, content), [_late_dkim()]),
            self._within(verify_arc(self.resolver, content), ArcVerdict("fail", "checks took too long")),
        )
        # RFC 7208 §2.4: with a null reverse-path the HELO identity is the one checked (and aligned).
        spf = spf_mfrom or spf_helo
        dmarcs = [
            await self._within(dmarc_check.evaluate(self.resolver, d, spf, dkim), _late_dmarc(d))
            for d in from_domains(content)
        ]
        results = _spf_results(spf_mfrom, mail_from, spf_helo) + _dkim_results(dkim)
        dmarc = [_dmarc_result(d) for d in dmarcs] or [MethodResult("dmarc", "none", "no From domain")]
        results += [*dmarc, MethodResult("arc", arc.result, arc.reason)]
        for item in results:
            SMTP_AUTH_RESULTS.labels(item.method, item.result).inc()
        header = header_field(self.policy.authserv_id, results)
        stripped = without_forged(content, self.policy.authserv_id)
        return self._decide(header, stripped, dmarcs)

    def _decide(self, header: bytes, content: bytes, dmarcs: Sequence[DmarcVerdict]) -> AuthVerdict:
        """What the DMARC verdicts ask for, when enforcing (RFC 7489 §6.7, §7.3 for the reply)."""
        if not self.policy.enforce:
            return AuthVerdict(header, content)
        failed = [d for d in dmarcs if d.result == DmarcResult.FAIL]
        rejecting = next((d for d in failed if d.disposition == "reject"), None)
        if rejecting is not None:
            why = f"550 5.7.1 Message refused: DMARC policy of {rejecting.domain} says reject ({rejecting.reason})"
            return AuthVerdict(header, content, why, "dmarc_reject")
        if any(d.result == DmarcResult.TEMPERROR for d in dmarcs):
            why = "451 4.7.5 Temporary DNS failure while checking the sender (DMARC), try again later"
            return AuthVerdict(header, content, why, "auth_temperror")
        if any(d.disposition == "quarantine" for d in failed):
            return AuthVerdict(header, content, None, "dmarc_quarantine", self.policy.quarantine_mailbox)
        return AuthVerdict(header, content)


async def _value(value: T) -> T:
    return value


def _late_dkim() -> DkimVerdict:
    return DkimVerdict(DkimResult.TEMPERROR, "", "", "", "checks took too long")


def _late_dmarc(domain: str) -> DmarcVerdict:
    return DmarcVerdict(DmarcResult.TEMPERROR, domain, reason="checks took too long")


def _spf_results(mfrom: SpfVerdict | None, mail_from: str, helo: SpfVerdict) -> list[MethodResult]:
    # RFC 8601 §2.7.2: one spf resinfo per identity checked.
    results = []
    if mfrom is not None:
        results.append(MethodResult("spf", mfrom.result, mfrom.reason, [("smtp.mailfrom", mail_from)]))
    if helo.domain:
        results.append(MethodResult("spf", helo.result, helo.reason, [("smtp.helo", helo.domain)]))
    return results


def _dkim_results(verdicts: Sequence[DkimVerdict]) -> list[MethodResult]:
    if not verdicts:
        return [MethodResult("dkim", "none", "message not signed")]
    return [
        MethodResult(
            "dkim", v.result, v.reason, [("header.d", v.domain), ("header.s", v.selector), ("header.b", v.signature)]
        )
        for v in verdicts
    ]


def _dmarc_result(verdict: DmarcVerdict) -> MethodResult:
    comment = f"p={verdict.policy} dis={verdict.disposition}"
    if verdict.reason:
        comment += f"; {verdict.reason}"
    return MethodResult("dmarc", verdict.result, comment, [("header.from", verdict.domain)])
