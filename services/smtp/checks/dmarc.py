"""DMARC (RFC 7489): policy discovery, identifier alignment and the disposition asked for.

The organisational domain comes from the Public Suffix List shipped in the `publicsuffixlist`
package (no network at run time; the list is as fresh as the installed package)."""

from __future__ import annotations

import enum
import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from mailstack.services.smtp.checks.dns import DnsTempError, Resolver
from mailstack.services.smtp.checks.signatures import DkimResult, DkimVerdict
from mailstack.services.smtp.checks.spf import SpfResult, SpfVerdict
from publicsuffixlist import PublicSuffixList


@functools.cache
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList()  # parsed once, on first use (~10k rules): not at start when the checks are off


POLICIES = ("none", "quarantine", "reject")


class DmarcResult(enum.StrEnum):
    # RFC 7489 §11.2
    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class DmarcRecord:
    policy: str  # p=
    subdomain_policy: str  # sp= (default p=)
    strict_dkim: bool  # adkim=s
    strict_spf: bool  # aspf=s
    percent: int  # pct=


@dataclass(frozen=True)
class DmarcVerdict:
    result: DmarcResult
    domain: str  # the RFC5322.From domain
    policy: str = "none"  # the policy published for that domain (p= or sp=)
    disposition: str = "none"  # what to do: the policy, or one step milder when pct= sampled it out
    reason: str = ""


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the domain itself when the PSL knows nothing)."""
    domain = domain.lower().removesuffix(".")
    return _suffix_list().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, strict: bool) -> bool:
    """RFC 7489 §3.1: the same domain (strict), or the same organisational domain (relaxed)."""
    identifier, from_domain = identifier.lower().removesuffix("."), from_domain.lower().removesuffix(".")
    if strict or identifier == from_domain:
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def parse_record(text: bytes) -> DmarcRecord | None:
    """A DMARC record (§6.3, §6.4), or None when it is not one or has no usable p= and no rua=."""
    try:
        tags = _tags(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if tags.get("v") != "DMARC1":
        return None
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        if "rua" not in tags:  # §6.6.3: with rua=, act as if p=none
            return None
        policy = "none"
    subdomain = tags.get("sp", policy).lower()
    percent = tags.get("pct", "100")
    return DmarcRecord(
        policy=policy,
        subdomain_policy=subdomain if subdomain in POLICIES else policy,
        strict_dkim=tags.get("adkim", "r").lower() == "s",
        strict_spf=tags.get("aspf", "r").lower() == "s",
        percent=min(int(percent), 100) if percent.isdigit() else 100,
    )


def _tags(text: str) -> dict[str, str]:
    """tag=value; pairs; the first tag must be v (§6.4)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise ValueError("tag without =")
        tags.setdefault(name.strip().lower(), value.strip())
    if next(iter(tags), "") != "v":
        raise ValueError("v= is not first")
    return tags


async def _records(resolver: Resolver, domain: str) -> list[DmarcRecord]:
    return [r for r in map(parse_record, await resolver.txt(f"_dmarc.{domain}")) if r is not None]


async def discover(resolver: Resolver, from_domain: str) -> tuple[DmarcRecord, bool] | None:
    """§6.6.3: the record at the From domain, else at its organisational domain; (record, whether it
    came from the organisational domain, so sp= applies). Several records: no policy."""
    records = await _records(resolver, from_domain)
    inherited = False
    if not records:
        org = organizational_domain(from_domain)
        if org == from_domain:
            return None
        records, inherited = await _records(resolver, org), True
    if len(records) != 1:
        return None
    return records[0], inherited


async def evaluate(resolver: Resolver, from_domain: str, spf: SpfVerdict, dkim: Sequence[DkimVerdict]) -> DmarcVerdict:
    """The DMARC verdict for one From domain; `spf` is the check of the SPF-authenticated identity."""
    try:
        found = await discover(resolver, from_domain)
    except DnsTempError as err:
        return DmarcVerdict(DmarcResult.TEMPERROR, from_domain, reason=str(err))
    if found is None:
        return DmarcVerdict(DmarcResult.NONE, from_domain, reason="no DMARC record")
    record, inherited = found
    policy = record.subdomain_policy if inherited else record.policy
    spf_aligned = aligned(spf.domain, from_domain, record.strict_spf)
    dkim_aligned = [d for d in dkim if d.domain and aligned(d.domain, from_domain, record.strict_dkim)]
    if (spf_aligned and spf.result == SpfResult.PASS) or any(d.result == DkimResult.PASS for d in dkim_aligned):
        return DmarcVerdict(DmarcResult.PASS, from_domain, policy)
    # A failure that DNS may have caused is not final: the sender retries (451), then it is decided.
    if (spf_aligned and spf.result == SpfResult.TEMPERROR) or any(
        d.result == DkimResult.TEMPERROR for d in dkim_aligned
    ):
        return DmarcVerdict(DmarcResult.TEMPERROR, from_domain, policy, reason="an aligned check had a DNS failure")
    return DmarcVerdict(
        DmarcResult.FAIL, from_domain, policy, _sampled(policy, record.percent), "no aligned SPF or DKIM pass"
    )


def _sampled(policy: str, percent: int) -> str:
    """§6.6.4: pct=N applies the policy to N % of failing mail, and the next milder one to the rest."""
    if percent >= 100 or random.randrange(100) < percent:
        return policy
    return POLICIES[max(POLICIES.index(policy) - 1, 0)]
