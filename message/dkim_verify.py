"""DKIM signature verification (RFC 6376 §6.1, RFC 8463 ed25519-sha256, RFC 8301 algorithms): pure,
with no DNS: the caller fetches the key record each signature names and passes it in.

Written for the inbound hot path (ADR 0040): canonicalization is bytes operations and a few
whole-body regular-expression passes that run only when the text needs them, the public keys are
parsed once per record (an LRU cache keyed by the record's bytes), and the signature check is one
OpenSSL call. dkimpy stays for signing and ARC; a differential test keeps the two in agreement.

Every size is bounded: the signature field, the names in h=, the key record, the key length.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

MAX_FIELD = 16 * 1024  # octets of one DKIM-Signature field (z= can copy headers; more is abuse)
MAX_SIGNED_NAMES = 128  # names in h=, oversigning included
MAX_KEY_RECORD = 4096  # octets of a key's TXT record (an RSA-8192 key is about 1.5 KB)
MIN_RSA_BITS = 1024  # RFC 8301 §3.2: shorter keys MUST NOT be accepted
MAX_RSA_BITS = 8192  # RFC 8301 asks for 4096 at least; beyond this is work for nothing
MAX_RSA_EXPONENT_BITS = 64  # what OpenSSL allows above 3072 bits; a huge e makes a verify cost a sign
CLOCK_SKEW = 300  # seconds an x= may be past before the signature counts as expired
KEY_CACHE = 512  # parsed public keys kept

ALGORITHMS = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519"}  # a= -> the key type it needs
_CANONS = (b"simple", b"relaxed")
_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*\Z")  # RFC 6376 §3.2 tag-name
_FWS = b" \t\r\n"
_WS_RUN = re.compile(rb"[ \t\r\n]+")
_LABEL = rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rb"(?=.{1,253}\Z)" + _LABEL + rb"(?:\." + _LABEL + rb")*\Z")  # d= and s= (sub-domain)
_DIGITS = re.compile(rb"[0-9]+\Z")
# A field (RFC 5322 §2.2, §4.5 WSP before the colon) at a line start, with its continuation lines.
_FIELD = re.compile(rb"^([^\x00-\x20:\x7f]+)[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*", re.MULTILINE)
_BARE_LF = re.compile(rb"\r?\n")


class DkimPermError(Exception):
    """The signature or its key cannot be used (RFC 6376 PERMFAIL other than a failed check): permerror."""


class DkimFailure(Exception):
    """The signature was checked and does not hold (body hash, signature, expiry): fail."""


# ---------------------------------------------------------------- tag lists (§3.2)


def tag_list(value: bytes) -> dict[bytes, bytes]:
    """tag=value pairs, names as written, values without surrounding FWS; a trailing ";" is allowed.
    A spec without "=", a bad tag name or a tag given twice is a permerror (§3.2, §6.1.1)."""
    specs = value.split(b";")
    if not specs[-1].strip(_FWS):
        specs.pop()
    tags: dict[bytes, bytes] = {}
    for spec in specs:
        name, eq, rest = spec.partition(b"=")
        name = name.strip(_FWS)
        if not eq or _TAG_NAME.match(name) is None:
            raise DkimPermError(f"tag list syntax: {spec.strip(_FWS)[:30]!r}")
        if name in tags:
            raise DkimPermError(f"tag {name.decode()}= appears twice")
        tags[name] = rest.strip(_FWS)
    return tags


def _b64(value: bytes, what: str, limit: int) -> bytes:
    compact = _WS_RUN.sub(b"", value)
    if len(compact) > limit * 4 // 3 + 4:
        raise DkimPermError(f"{what} is too long")
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error:
        raise DkimPermError(f"{what} is not base64") from None


def _colon_list(value: bytes) -> list[bytes]:
    return [item.strip(_FWS).lower() for item in value.split(b":")]


# ---------------------------------------------------------------- the message


class Message:
    """A message cut into header fields and body once, for all its signatures. Lines end in CRLF;
    a bare LF is read as CRLF, as dkimpy does. Only the header is looked at when it is made: the
    body is canonicalized when a signature's body hash is asked for (off the event loop for big
    messages)."""

    __slots__ = ("_body", "_body_hashes", "_body_start", "_by_name", "_content", "fields")

    def __init__(self, content: bytes) -> None:
        self._content = content
        header, self._body_start = _split(content)
        if header.count(b"\n") != header.count(b"\r\n"):
            header = _BARE_LF.sub(b"\r\n", header)
        if header and not header.endswith(b"\r\n"):
            header += b"\r\n"  # a header-only message without its last line end
        self.fields = _fields(header)
        self._by_name: dict[bytes, list[int]] = {}
        for index, (name, _) in enumerate(self.fields):
            self._by_name.setdefault(name, []).append(index)
        self._body_hashes: dict[tuple[bool, int | None], tuple[bytes, int]] = {}
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        if self._body is None:
            body = self._content[self._body_start :]
            if body.count(b"\n") != body.count(b"\r\n"):
                body = _BARE_LF.sub(b"\r\n", body)
            self._body = body
        return self._body

    def signature_fields(self) -> list[bytes]:
        """The DKIM-Signature fields, top first, each as written (name, value, CRLF)."""
        return [self.fields[i][1] for i in self._by_name.get(b"dkim-signature", [])]

    def selected(self, names: list[bytes]) -> list[tuple[bytes, bytes]]:
        """(lower-case name, text) of the fields h= names, each name taking the next instance from the
        bottom; a name listed more often than present selects nothing more (§5.4.2, oversigning)."""
        used: dict[bytes, int] = {}
        out = []
        for name in names:
            present = self._by_name.get(name)
            count = used.get(name, 0)
            if present is None or count >= len(present):
                continue
            used[name] = count + 1
            out.append(self.fields[present[-1 - count]])
        return out

    def body_hash(self, relaxed: bool, length: int | None) -> bytes:
        """SHA-256 of the canonical body (§3.4.3, §3.4.4), its first `length` octets under l=;
        computed once per canonicalization and length."""
        key = (relaxed, length)
        cached = self._body_hashes.get(key)
        if cached is None:
            body = relaxed_body(self.body) if relaxed else simple_body(self.body)
            if length is not None and length > len(body):
                cached = (b"", len(body))
            else:
                cached = (hashlib.sha256(body if length is None else body[:length]).digest(), len(body))
            self._body_hashes[key] = cached
        digest, size = cached
        if not digest:
            raise DkimPermError(f"l={length} is longer than the body ({size} octets)")
        return digest


def _split(content: bytes) -> tuple[bytes, int]:
    """The header (up to the empty line, which is left out) and where the body starts (RFC 5322 §2.1)."""
    for blank in (b"\r\n", b"\n"):
        if content.startswith(blank):
            return b"", len(blank)
    crlf = content.find(b"\n\r\n")
    lf = content.find(b"\n\n", 0, crlf if crlf >= 0 else len(content))  # bare-LF mail; stops where CRLF ends
    if lf >= 0:
        return content[: lf + 1], lf + 2
    if crlf >= 0:
        return content[: crlf + 1], crlf + 3
    return content, len(content)


def _fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, field text with its continuation lines and CRLF) in order; a line that
    is not a field (an mbox "From " line, garbage) is skipped with its continuation lines."""
    return [(m.group(1).lower(), m.group(0)) for m in _FIELD.finditer(header)]


# ---------------------------------------------------------------- canonicalization (§3.4)


def _crlf_run_at_end(data: bytes) -> int:
    """Length of the longest suffix of data that is CRLF repeated (the empty lines at the end)."""
    stripped = len(data.rstrip(b"\r\n"))
    tail = data[stripped:]
    if not tail or tail.endswith(b"\r"):
        return 0
    # In a run of CRs and LFs the (\r\n)* suffix begins after the last doubled character.
    start = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    size = len(tail) - start
    return size - size % 2


def simple_body(body: bytes) -> bytes:
    """§3.4.3: empty lines at the end go; an empty body is one CRLF; a last line gets its CRLF."""
    kept = body[: len(body) - _crlf_run_at_end(body)]
    return kept + b"\r\n"


def _one_space(text: bytes) -> bytes:
    """Every run of WSP (SP, HTAB) as one SP, by bytes replacements: ordinary text (single spaces)
    costs one substring search, where a regular expression would stop at every space; a run of n
    spaces takes log2(n) passes."""
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    while b"  " in text:
        text = text.replace(b"  ", b" ")
    return text


def relaxed_body(body: bytes) -> bytes:
    """§3.4.4: WSP runs as one SP, none at line ends, no empty lines at the end; an empty body
    stays empty. WSP at the end of an unterminated last line goes too (it ends a line)."""
    body = _one_space(body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    if body.endswith(b" "):
        body = body[:-1]
    kept = body[: len(body) - _crlf_run_at_end(body)]
    return kept + b"\r\n" if kept else b""


def relaxed_field(name: bytes, text: bytes) -> bytes:
    """§3.4.2: lower-case name, unfolded value with WSP runs as one SP and none around it, CRLF."""
    value = _one_space(text[text.index(b":") + 1 :].replace(b"\r\n", b""))
    return name + b":" + value.strip(b" ") + b"\r\n"


def without_b_value(field: bytes) -> bytes:
    """The signature field with the b= value and the whitespace around it removed (§3.5 b=, §3.7),
    the rest exactly as written."""
    colon = field.index(b":")
    specs = field[colon + 1 :].split(b";")
    for i, spec in enumerate(specs):
        name, eq, _ = spec.partition(b"=")
        if eq and name.strip(_FWS) == b"b":
            specs[i] = spec[: len(name) + 1]
            break
    return field[: colon + 1] + b";".join(specs)


# ---------------------------------------------------------------- the signature (§3.5)


@dataclass(frozen=True, slots=True)
class Signature:
    field: bytes  # the DKIM-Signature field as written
    algorithm: bytes  # a=, lower-case
    domain: str  # d=, lower-case
    selector: str  # s=
    identity_domain: str  # the domain of i= (d= when absent), lower-case
    names: list[bytes]  # h=, lower-case, in order
    body_hash: bytes  # bh=, decoded
    signature: bytes  # b=, decoded
    relaxed_header: bool
    relaxed_body: bool
    length: int | None  # l=
    timestamp: int | None  # t=
    expiry: int | None  # x=

    def expired(self, now: float) -> bool:
        """§3.5 x=: past the expiry (by more than the clock skew allowed)."""
        return self.expiry is not None and self.expiry + CLOCK_SKEW < now

    @property
    def key_name(self) -> str:
        """Where the key is published (§3.6.2.1), absolute."""
        return f"{self.selector}._domainkey.{self.domain}."


def signature_tags(field: bytes) -> dict[bytes, bytes]:
    """The tags of a DKIM-Signature field (name, value, CRLF), within MAX_FIELD."""
    if len(field) > MAX_FIELD:
        raise DkimPermError("signature field too long")
    return tag_list(field[field.index(b":") + 1 :])


def read_signature(field: bytes, tags: dict[bytes, bytes]) -> Signature:
    """The signature in a DKIM-Signature field and its tags (signature_tags), checked as §6.1.1 asks."""
    missing = [t.decode() for t in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s") if t not in tags]
    if missing:
        raise DkimPermError(f"signature without {'= '.join(missing)}=")
    if tags[b"v"] != b"1":
        raise DkimPermError("v= is not 1")
    domain, selector = _name(tags[b"d"], "d="), _name(tags[b"s"], "s=")
    header_canon, body_canon = _canonicalization(tags.get(b"c", b"simple"))
    timestamp, expiry = _number(tags, b"t", 12), _number(tags, b"x", 12)
    if timestamp is not None and expiry is not None and expiry <= timestamp:
        raise DkimPermError("x= is not after t=")
    if b"q" in tags and b"dns/txt" not in _colon_list(tags[b"q"]):
        raise DkimPermError("q= names no dns/txt")
    return Signature(
        field=field,
        algorithm=_algorithm(tags[b"a"]),
        domain=domain,
        selector=selector,
        identity_domain=_identity_domain(tags.get(b"i"), domain),
        names=_signed_names(tags[b"h"]),
        body_hash=_b64(tags[b"bh"], "bh=", 64),
        signature=_b64(tags[b"b"], "b=", MAX_RSA_BITS // 8),
        relaxed_header=header_canon == b"relaxed",
        relaxed_body=body_canon == b"relaxed",
        length=_number(tags, b"l", 76),
        timestamp=timestamp,
        expiry=expiry,
    )


def _name(value: bytes, what: str) -> str:
    if _DOMAIN.match(value) is None:
        raise DkimPermError(f"{what} is not a domain name")
    return value.decode("ascii").lower() if what == "d=" else value.decode("ascii")


def _algorithm(value: bytes) -> bytes:
    algorithm = value.lower()
    if algorithm == b"rsa-sha1":
        raise DkimPermError("rsa-sha1 is not accepted (RFC 8301)")
    if algorithm not in ALGORITHMS:
        raise DkimPermError(f"unknown algorithm a={value[:20].decode('ascii', 'replace')}")
    return algorithm


def _canonicalization(value: bytes) -> tuple[bytes, bytes]:
    header, _, body = value.lower().partition(b"/")
    body = body or b"simple"
    if header not in _CANONS or body not in _CANONS:
        raise DkimPermError(f"unknown canonicalization c={value[:30].decode('ascii', 'replace')}")
    return header, body


def _number(tags: dict[bytes, bytes], name: bytes, digits: int) -> int | None:
    value = tags.get(name)
    if value is None:
        return None
    if _DIGITS.match(value) is None or len(value) > digits:
        raise DkimPermError(f"{name.decode()}= is not a number of at most {digits} digits")
    return int(value)


def _identity_domain(identity: bytes | None, domain: str) -> str:
    """The domain of i= (§3.5): d= itself or one of its subdomains."""
    if identity is None:
        return domain
    _, at, host = identity.rpartition(b"@")
    found = host.decode("ascii", "replace").lower()
    if not at or not (found == domain or found.endswith("." + domain)):
        raise DkimPermError("i= is not in the d= domain")
    return found


def _signed_names(value: bytes) -> list[bytes]:
    names = _colon_list(value)
    if len(names) > MAX_SIGNED_NAMES:
        raise DkimPermError(f"h= lists more than {MAX_SIGNED_NAMES} names")
    if not all(names):
        raise DkimPermError("h= has an empty name")
    if b"from" not in names:
        raise DkimPermError("h= does not include From")  # §6.1.1
    return names


# ---------------------------------------------------------------- keys (§3.6.1)


@dataclass(frozen=True, slots=True)
class _Key:
    kind: bytes  # k=
    public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    hashes: list[bytes] | None  # h=, None when any
    strict_identity: bool  # t=s: i= must be in d= itself, not a subdomain


def _read_key(record: bytes) -> _Key:
    """A key record (§3.6.1); the cached form is in _parsed_key."""
    tags = tag_list(record)
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise DkimPermError("key record v= is not DKIM1")
    if b"s" in tags and not {b"*", b"email"} & set(_colon_list(tags[b"s"])):
        raise DkimPermError("key is not for email (s=)")
    if b"p" not in tags:
        raise DkimPermError("key record without p=")
    if not tags[b"p"]:
        raise DkimPermError("key revoked (empty p=)")
    kind = tags.get(b"k", b"rsa").lower()
    material = _b64(tags[b"p"], "p=", MAX_KEY_RECORD)
    public = _rsa_key(material) if kind == b"rsa" else _ed25519_key(material) if kind == b"ed25519" else None
    if public is None:
        raise DkimPermError(f"unknown key type k={kind[:20].decode('ascii', 'replace')}")
    hashes_ = _colon_list(tags[b"h"]) if b"h" in tags else None
    return _Key(kind, public, hashes_, b"s" in _colon_list(tags.get(b"t", b"")))


def _rsa_key(der: bytes) -> rsa.RSAPublicKey:
    """SubjectPublicKeyInfo or PKCS#1 RSAPublicKey DER: both are published."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise DkimPermError("p= is not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise DkimPermError("p= is not an RSA public key")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise DkimPermError(f"RSA key of {key.key_size} bits (accepted: {MIN_RSA_BITS} to {MAX_RSA_BITS})")
    if key.public_numbers().e.bit_length() > MAX_RSA_EXPONENT_BITS:
        raise DkimPermError("RSA public exponent too large")
    return key


def _ed25519_key(raw: bytes) -> ed25519.Ed25519PublicKey:
    """RFC 8463 §4.2: p= is the 32-octet public key itself."""
    try:
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise DkimPermError("p= is not an ed25519 public key") from None


@functools.lru_cache(maxsize=KEY_CACHE)
def _parsed_key(record: bytes) -> _Key | str:
    """The key, or why it cannot be used: a bad record is remembered as well as a good one."""
    try:
        return _read_key(record)
    except DkimPermError as err:
        return str(err)


def _key_for(signature: Signature, record: bytes) -> _Key:
    if len(record) > MAX_KEY_RECORD:
        raise DkimPermError("key record too long")
    key = _parsed_key(record)
    if isinstance(key, str):
        raise DkimPermError(key)
    if key.kind != ALGORITHMS[signature.algorithm]:
        raise DkimPermError(f"key type k={key.kind.decode()} does not match a={signature.algorithm.decode()}")
    if key.hashes is not None and b"sha256" not in key.hashes:
        raise DkimPermError("key does not allow sha256 (h=)")
    if key.strict_identity and signature.identity_domain != signature.domain:
        raise DkimPermError("key requires i= in d= itself (t=s)")
    return key


# ---------------------------------------------------------------- verification (§6.1.3)


def header_data(message: Message, signature: Signature) -> bytes:
    """The canonical header fields h= selects, then the signature field without b= and its CRLF."""
    # §8.15: a From the signature did not cover counts against it, as if From were listed once
    # more (dkimpy does the same): a second From must not ride on the first one's signature.
    fields = message.selected([*signature.names, b"from"])
    own = without_b_value(signature.field)
    if signature.relaxed_header:
        parts = [relaxed_field(name, text) for name, text in fields]
        parts.append(relaxed_field(b"dkim-signature", own)[:-2])
    else:
        parts = [text for _, text in fields]
        parts.append(own.removesuffix(b"\r\n"))
    return b"".join(parts)


def verify(message: Message, signature: Signature, record: bytes, now: float) -> None:
    """Returns when the signature holds against the key record; raises DkimFailure or DkimPermError."""
    key = _key_for(signature, record)
    if signature.expired(now):
        raise DkimFailure(f"signature expired (x={signature.expiry})")
    if message.body_hash(signature.relaxed_body, signature.length) != signature.body_hash:
        raise DkimFailure("body hash did not verify")
    data = header_data(message, signature)
    try:
        if isinstance(key.public, rsa.RSAPublicKey):
            key.public.verify(signature.signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:  # RFC 8463 §3: Ed25519 over the SHA-256 of the header data
            key.public.verify(signature.signature, hashlib.sha256(data).digest())
    except InvalidSignature:
        raise DkimFailure("signature did not verify") from None
