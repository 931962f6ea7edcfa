"""Keys, key records and verdicts for the DKIM verification tests: ours (message.dkim_verify) and
dkimpy's for the same message, as RFC 8601 result words."""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from mailstack.message import dkim_verify
from mailstack.message.dkim_verify import DkimFailure, DkimPermError

_QUIET = logging.getLogger("tests.dkimpy")  # dkimpy logs every bad signature at ERROR
_QUIET.setLevel(logging.CRITICAL)
_QUIET.propagate = False


@dataclass(frozen=True)
class Key:
    private: bytes  # what dkimpy's sign takes: PEM for RSA, base64 of the raw seed for ed25519
    record: bytes  # the TXT record
    algorithm: bytes


def rsa_key(bits: int = 2048, pkcs1: bool = False) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    form = serialization.PublicFormat.PKCS1 if pkcs1 else serialization.PublicFormat.SubjectPublicKeyInfo
    der = private.public_key().public_bytes(serialization.Encoding.DER, form)
    return Key(pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der), b"rsa-sha256")


def ed25519_key() -> Key:
    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Key(base64.b64encode(seed), b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw), b"ed25519-sha256")


def sign(
    content: bytes,
    key: Key,
    domain: bytes = b"example.test",
    selector: bytes = b"sel",
    canon: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
    headers: list[bytes] | None = None,
    length: bool = False,
    identity: bytes | None = None,
) -> bytes:
    """content with a dkimpy DKIM-Signature field on top."""
    signer = dkim.DKIM(content, signature_algorithm=key.algorithm, logger=_QUIET)
    signer.should_not_sign.discard(b"dkim-signature")  # a test may sign an earlier signature field
    field = signer.sign(
        selector, domain, key.private, identity=identity, canonicalize=canon, include_headers=headers, length=length
    )
    return bytes(field) + content


Records = dict[str, bytes]  # "sel._domainkey.example.test." -> TXT record


def ours(content: bytes, records: Records, now: float | None = None) -> list[tuple[str, str]]:
    """(result, reason) per DKIM-Signature, top first: pass, fail or permerror."""
    message = dkim_verify.Message(content)
    out = []
    for field in message.signature_fields():
        try:
            signature = dkim_verify.read_signature(field, dkim_verify.signature_tags(field))
            record = records.get(signature.key_name)
            if record is None:
                raise DkimPermError("no key published")
            dkim_verify.verify(message, signature, record, time.time() if now is None else now)
        except DkimFailure as err:
            out.append(("fail", str(err)))
        except DkimPermError as err:
            out.append(("permerror", str(err)))
        else:
            out.append(("pass", ""))
    return out


def theirs(content: bytes, records: Records) -> list[str]:
    """dkimpy's verdict per signature: a verified signature passes, a failed check fails, a
    malformed signature or key is a permerror. dkimpy raises its ValidationError for bad tags as
    well as for a body hash mismatch, so "fail" from it may be our "permerror": `agree` compares
    what matters, whether the signature holds."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode())

    verifier = dkim.DKIM(content, minkey=1024, logger=_QUIET)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    out = []
    for index in range(count):
        try:
            out.append("pass" if verifier.verify(index, dnsfunc=dnsfunc) else "fail")
        except dkim.ValidationError:
            out.append("fail")
        except dkim.DKIMException:
            out.append("permerror")
    return out


def agree(content: bytes, records: Records) -> tuple[list[str], list[str]]:
    """(ours, dkimpy's) verdicts with dkimpy's "fail" read as ours when we say permerror (see theirs).
    A header dkimpy cannot read (a line that is not a field) gets no verdict from it: no signature of
    ours may pass there."""
    mine = results(content, records)
    try:
        other = theirs(content, records)
    except dkim.MessageFormatError:
        return mine, [m if m != "pass" else "unreadable by dkimpy" for m in mine]
    if len(mine) == len(other):
        other = [m if (m, o) == ("permerror", "fail") else o for m, o in zip(mine, other, strict=True)]
    return mine, other


def hand_signed(content: bytes, tags: str, key: Key, b: str | None = None) -> bytes:
    """content with a DKIM-Signature of these tags (bh= computed unless given) signed by key, or
    with b= as given (for signatures that must be refused before any signature check). Made with
    `cryptography` over the header data our module computes: for tests of tags (x=, i=, t=s, long
    h=), not of the canonicalization, which the differential test checks against dkimpy."""
    relaxed = "/relaxed" in tags
    body = dkim_verify.Message(content).body
    if "bh=" not in tags:
        digest = hashlib.sha256(dkim_verify.relaxed_body(body) if relaxed else dkim_verify.simple_body(body)).digest()
        tags += f"; bh={base64.b64encode(digest).decode()}"
    field = f"DKIM-Signature: {tags}; b=".encode()
    if b is None:
        unsigned = field + b"\r\n" + content
        message = dkim_verify.Message(unsigned)
        signature = dkim_verify.read_signature(field + b"\r\n", dkim_verify.tag_list(field[15:]))
        data = dkim_verify.header_data(message, signature)
        b = base64.b64encode(_private_sign(key, data)).decode()
    return field + b.encode() + b"\r\n" + content


def _private_sign(key: Key, data: bytes) -> bytes:
    if key.algorithm == b"ed25519-sha256":
        private = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(key.private))
        return private.sign(hashlib.sha256(data).digest())
    pem_key = serialization.load_pem_private_key(key.private, None)
    assert isinstance(pem_key, rsa.RSAPrivateKey)
    return pem_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def results(content: bytes, records: Records) -> list[str]:
    return [result for result, _ in ours(content, records)]
