"""DKIM (RFC 6376) verification with our own verifier, ARC (RFC 8617) with dkimpy.

The keys every signature names are fetched first, concurrently, through our async resolver;
the signatures are then checked against that answer table: DKIM by `message.dkim_verify` (ADR
0040: dkimpy's pure-Python RSA and parsing cost most of the CPU of a check), ARC by dkimpy,
whose `dnsfunc` is synchronous, and which only runs when ARC fields are present. Work is
bounded: at most MAX_SIGNATURES DKIM signatures and MAX_ARC_SETS ARC sets are looked at (RFC
6376 §6.1 lets a verifier limit them), and a large message is hashed in a worker thread, off the
event loop."""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value
from mailstack.message import dkim_verify
from mailstack.message.dkim_verify import DkimFailure, DkimPermError, Signature
from mailstack.services.smtp.checks.dns import DnsTempError, Resolver

MAX_SIGNATURES = 5  # DKIM-Signature fields verified; others are ignored
MAX_ARC_SETS = 10  # ARC sets accepted; more fail the chain (RFC 8617 §5.1.1.1 allows 50)
T = TypeVar("T")
THREAD_ABOVE = 256 * 1024  # message size from which hashing leaves the event loop

# dkimpy logs every bad signature at ERROR with the sender's text in it: kept out of our logs.
_DKIMPY_LOG = logging.getLogger("mailstack.smtp.dkimpy")
_DKIMPY_LOG.setLevel(logging.CRITICAL)
_DKIMPY_LOG.propagate = False


class DkimResult(enum.StrEnum):
    # RFC 8601 §2.7.1
    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class DkimVerdict:
    result: DkimResult
    domain: str  # d=, lowercase ("" when the signature could not be read)
    selector: str
    signature: str  # the start of b= (RFC 6008 header.b)
    reason: str = ""


@dataclass(frozen=True)
class ArcVerdict:
    result: str  # none, pass, fail (RFC 8617 §10.1)
    reason: str = ""


Keys = dict[bytes, bytes | DnsTempError | None]  # "s._domainkey.d." -> first TXT record


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(parse_tag_value(value))
    except (InvalidTagValueList, ValueError):
        return {}


def _key_name(tags: dict[bytes, bytes]) -> bytes | None:
    """The key's DNS name as dkimpy asks for it (selector, domain, trailing dot)."""
    selector, domain = tags.get(b"s"), tags.get(b"d")
    if not selector or not domain:
        return None
    return selector + b"._domainkey." + domain + b"."


async def _fetch_keys(resolver: Resolver, names: Iterable[bytes]) -> Keys:
    async def one(name: bytes) -> bytes | DnsTempError | None:
        try:
            records = await resolver.txt(name.decode("ascii", "replace"))
        except DnsTempError as err:
            return err
        return records[0] if records else None

    unique = sorted(set(names))
    found = await asyncio.gather(*(one(name) for name in unique))
    return dict(zip(unique, found, strict=True))


def _lookup(keys: Keys) -> Callable[..., bytes | None]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        key = keys.get(name)
        return None if isinstance(key, DnsTempError) else key

    return dnsfunc


async def _off_loop(size: int, work: Callable[[], T]) -> T:
    return await asyncio.to_thread(work) if size > THREAD_ABOVE else work()


# ---------------------------------------------------------------- DKIM


async def verify_dkim(resolver: Resolver, content: bytes) -> list[DkimVerdict]:
    """A verdict per DKIM-Signature (the first MAX_SIGNATURES, top first); [] when unsigned."""
    message = await _off_loop(len(content), lambda: dkim_verify.Message(content))  # a huge header too
    fields = message.signature_fields()[:MAX_SIGNATURES]
    if not fields:
        return []
    now = time.time()
    readings = [_read(field, now) for field in fields]
    names = (r.key_name.encode() for r in readings if isinstance(r, Signature))
    keys = await _fetch_keys(resolver, names)

    def work() -> list[DkimVerdict]:
        return [r if isinstance(r, DkimVerdict) else _verify_one(message, r, keys, now) for r in readings]

    return await _off_loop(len(content), work)


def _read(field: bytes, now: float) -> Signature | DkimVerdict:
    """The signature, or the verdict when it can be given without the key (RFC 6376 §6.1.1)."""
    try:
        tags = dkim_verify.signature_tags(field)
    except DkimPermError as err:
        return DkimVerdict(DkimResult.PERMERROR, "", "", "", str(err))
    domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
    selector = tags.get(b"s", b"").decode("ascii", "replace")
    start = re.sub(rb"\s+", b"", tags.get(b"b", b""))[:12].decode("ascii", "replace")
    try:
        signature = dkim_verify.read_signature(field, tags)
    except DkimPermError as err:
        return DkimVerdict(DkimResult.PERMERROR, domain, selector, start, str(err))
    if signature.expired(now):
        return DkimVerdict(DkimResult.FAIL, domain, selector, start, f"signature expired (x={signature.expiry})")
    return signature


def _verify_one(message: dkim_verify.Message, signature: Signature, keys: Keys, now: float) -> DkimVerdict:
    start = base64.b64encode(signature.signature[:9]).decode()

    def verdict(result: DkimResult, reason: str = "") -> DkimVerdict:
        return DkimVerdict(result, signature.domain, signature.selector, start, reason)

    key = keys.get(signature.key_name.encode())
    if isinstance(key, DnsTempError):
        return verdict(DkimResult.TEMPERROR, "key lookup failed")
    if key is None:
        return verdict(DkimResult.PERMERROR, "no key published")
    try:
        dkim_verify.verify(message, signature, key, now)
    except DkimFailure as err:
        return verdict(DkimResult.FAIL, str(err)[:80])
    except DkimPermError as err:
        return verdict(DkimResult.PERMERROR, str(err)[:80])
    return verdict(DkimResult.PASS)


# ---------------------------------------------------------------- ARC


def _has_field(content: bytes, names: tuple[bytes, ...]) -> bool:
    """Whether the header (up to the first empty line) has a field of one of these lower-case names:
    most mail has no ARC set, and parsing the whole message for none costs as much as a check."""
    end = content.find(b"\r\n\r\n")
    header = content[: end if end >= 0 else len(content)].lower()
    return any(header.startswith(name + b":") or (b"\n" + name + b":") in header for name in names)


async def verify_arc(resolver: Resolver, content: bytes) -> ArcVerdict:
    """The chain validation status of RFC 8617 §5.2."""
    if not _has_field(content, (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")):
        return ArcVerdict("none")
    try:
        arc = dkim.ARC(content, logger=_DKIMPY_LOG, minkey=1024)
    except dkim.DKIMException as err:
        return ArcVerdict("fail", str(err)[:80])
    names = (b"arc-seal", b"arc-message-signature")
    values = [value for name, value in arc.headers if name.lower() in names]
    if not values:
        return ArcVerdict("none")
    if len(values) > 2 * MAX_ARC_SETS:
        return ArcVerdict("fail", f"more than {MAX_ARC_SETS} ARC sets")
    keys = await _fetch_keys(resolver, (n for n in (_key_name(_tags(v)) for v in values) if n is not None))
    if any(isinstance(key, DnsTempError) for key in keys.values()):
        return ArcVerdict("fail", "key lookup failed (temporary)")

    def work() -> ArcVerdict:
        try:
            status, _, reason = arc.verify(dnsfunc=_lookup(keys))
        except dkim.DKIMException as err:
            return ArcVerdict("fail", str(err)[:80])
        return ArcVerdict("pass") if status == dkim.CV_Pass else ArcVerdict("fail", str(reason)[:80])

    return await _off_loop(len(content), work)
