"""Validation and normalisation of mailbox names and mail addresses (pure)."""

from __future__ import annotations

MAX_MAILBOX_NAME_BYTES = 1000
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32
MAX_ADDRESS_LENGTH = 254  # RFC 5321 §4.5.3.1.3 path limit, less the brackets


class InvalidNameError(ValueError):
    pass


def normalize_mailbox_name(name: str) -> str:
    """'INBOX' in any case (and as a parent) becomes 'INBOX'; names are never storage paths.

    Refused: empty, NUL or other control characters, leading/trailing/double '/',
    '.' or '..' components, over-long names or components, too deep hierarchies.
    """
    _check_characters(name)
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        raise InvalidNameError("mailbox hierarchy too deep")
    for part in parts:
        _check_component(part)
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return "/".join(parts)


def _check_characters(name: str) -> None:
    if not name:
        raise InvalidNameError("empty mailbox name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_MAILBOX_NAME_BYTES:
        raise InvalidNameError("mailbox name too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidNameError("control character in mailbox name")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise InvalidNameError("invalid character in mailbox name")


def _check_component(part: str) -> None:
    if part == "":
        raise InvalidNameError("empty component in mailbox name")
    if part in (".", ".."):
        raise InvalidNameError("'.' and '..' are not mailbox names")
    if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise InvalidNameError("mailbox name component too long")


def normalize_address(address: str, allow_catchall: bool = False) -> str:
    """Lower-cased 'local@domain' (or '@domain', a catch-all, when allowed)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidNameError("invalid address length")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in address):
        raise InvalidNameError("invalid character in address")
    local, sep, domain = address.rpartition("@")
    if not sep or not domain or (not local and not allow_catchall):
        raise InvalidNameError(f"not an address: {address!r}")
    if "." in (domain[0], domain[-1]) or ".." in domain:
        raise InvalidNameError(f"invalid domain in {address!r}")
    return f"{local.lower()}@{domain.lower()}"


def normalize_domain(domain: str) -> str:
    domain = domain.strip().lower().rstrip(".")
    if not domain or len(domain) > 253 or any(not (c.isalnum() or c in "-.") for c in domain) or ".." in domain:
        raise InvalidNameError(f"invalid domain {domain!r}")
    return domain


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
