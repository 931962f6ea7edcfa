"""DKIM signing of outbound mail (RFC 6376) with dkimpy, and key generation for `mailstack dkim keygen`."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# Signed when present (RFC 6376 §5.4.1 recommends From, Subject, Date, To, Cc, Message-ID, MIME headers).
SIGNED_HEADERS = tuple(
    h.encode()
    for h in "from reply-to subject date to cc message-id mime-version content-type content-transfer-encoding"
    " in-reply-to references".split()
)


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    private_key: bytes  # PEM


def parse_keys(setting: str) -> dict[str, DkimKey]:
    """`DOMAIN=SELECTOR:/path/key.pem,...` -> keys by domain, read now (a missing file fails at start)."""
    keys: dict[str, DkimKey] = {}
    for item in filter(None, (part.strip() for part in setting.split(","))):
        domain, _, rest = item.partition("=")
        selector, _, path = rest.partition(":")
        if not domain or not selector or not path:
            raise ValueError(f"dkim_keys: expected DOMAIN=SELECTOR:PATH, got {item!r}")
        keys[domain.strip().lower()] = DkimKey(domain.strip().lower(), selector.strip(), Path(path).read_bytes())
    return keys


def sign(data: bytes, key: DkimKey) -> bytes:
    """The message with a DKIM-Signature header prepended (relaxed/relaxed, rsa-sha256)."""
    header: bytes = dkim.sign(
        data,
        key.selector.encode(),
        key.domain.encode(),
        key.private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h for h in SIGNED_HEADERS if _has_header(data, h)],
    )
    return header + data


def _has_header(data: bytes, name: bytes) -> bool:
    end = data.find(b"\r\n\r\n")
    head = data[: end if end >= 0 else len(data)].lower()
    return head.startswith(name + b":") or (b"\n" + name + b":") in head


def generate_key(bits: int = 2048) -> tuple[bytes, str]:
    """(private key PEM, the p= value of the DNS TXT record)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode()


def dns_record(domain: str, selector: str, public_b64: str) -> str:
    """The TXT record to publish (RFC 6376 §3.6.1)."""
    return f'{selector}._domainkey.{domain}. IN TXT "v=DKIM1; k=rsa; p={public_b64}"'
