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
    """`DOMAIN=SELECTOR:/path/key.pem,...` -> keys by domain, read now (a missing file fails at start).
    An item that is a folder (a mounted Secret, or what `mailstack dkim keygen` writes) holds one
    `DOMAIN.SELECTOR.pem` file per key; hidden entries (a Secret's `..data` links) are skipped."""
    keys: dict[str, DkimKey] = {}
    for item in filter(None, (part.strip() for part in setting.split(","))):
        if "=" not in item and Path(item).is_dir():
            keys.update(_folder_keys(Path(item)))
            continue
        domain, _, rest = item.partition("=")
        selector, _, path = rest.partition(":")
        if not domain or not selector or not path:
            raise ValueError(f"dkim_keys: expected DOMAIN=SELECTOR:PATH or a folder, got {item!r}")
        keys[domain.strip().lower()] = DkimKey(domain.strip().lower(), selector.strip(), Path(path).read_bytes())
    return keys


def _folder_keys(folder: Path) -> dict[str, DkimKey]:
    keys = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix != ".pem" or not path.is_file():
            continue
        domain, dot, selector = path.stem.rpartition(".")  # the selector is the last label
        if not dot or not domain or not selector:
            raise ValueError(f"dkim_keys: {path}: expected a file named DOMAIN.SELECTOR.pem")
        keys[domain.lower()] = DkimKey(domain.lower(), selector, path.read_bytes())
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


TXT_STRING = 255  # octets per character-string in a TXT record (RFC 1035 §3.3.14)


def dns_record(domain: str, selector: str, public_b64: str) -> str:
    """The TXT record to publish (RFC 6376 §3.6.1) in zone-file form: the value split into quoted
    strings of at most 255 octets, which DNS joins back together (RFC 6376 §3.6.2.2)."""
    value = f"v=DKIM1; k=rsa; p={public_b64}"
    parts = [value[i : i + TXT_STRING] for i in range(0, len(value), TXT_STRING)]
    strings = "\n    ".join(f'"{part}"' for part in parts)
    return f"{selector}._domainkey.{domain}. IN TXT (\n    {strings} )"
