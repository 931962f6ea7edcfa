"""SASL PLAIN (RFC 4616) for AUTH PLAIN (RFC 5034)."""

from __future__ import annotations

import base64
import binascii


class SaslError(ValueError):
    """The client's SASL message is malformed (answer -ERR; RFC 5034 §4)."""


def decode_plain(response: bytes) -> tuple[str, str, str]:
    """(authzid, authcid, password) from a base64 PLAIN response: [authzid] NUL authcid NUL passwd."""
    try:
        raw = base64.b64decode(response.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("invalid base64") from None
    parts = raw.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise SaslError("malformed PLAIN message")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SaslError("PLAIN message is not UTF-8") from None
    return authzid, authcid, password
