"""AWS Signature Version 4 for S3 requests in the Authorization header (pure: no I/O, no clock).

Written from the AWS text ("Signature Version 4 signing process" and S3's "Authenticating Requests:
Using the Authorization Header"). S3 differs from other services in two ways that matter here: the
canonical URI is the path encoded once (not twice), and the payload hash is sent as the
x-amz-content-sha256 header, which may be the literal UNSIGNED-PAYLOAD.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """RFC 3986 percent-encoding of UTF-8 bytes, all but the unreserved set A-Z a-z 0-9 - . _ ~
    (and "/" in a path), with upper-case hex digits, as SigV4's canonical request requires."""
    return quote(text, safe="/~" if keep_slash else "~")


def _canonical_query(query: Mapping[str, str]) -> str:
    # Sorted by encoded name, then value; a name without a value keeps its "=".
    pairs = sorted((uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False)) for k, v in query.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_request(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], payload_hash: str
) -> tuple[str, str]:
    """(canonical request, signed header list). path is already URI-encoded (S3 encodes it once);
    every header in headers is signed (names are lower-cased, values trimmed, inner spaces folded)."""
    canonical = sorted((name.lower(), " ".join(value.split())) for name, value in headers.items())
    signed = ";".join(name for name, _ in canonical)
    header_block = "".join(f"{name}:{value}\n" for name, value in canonical)
    request = f"{method}\n{path}\n{_canonical_query(query)}\n{header_block}\n{signed}\n{payload_hash}"
    return request, signed


def string_to_sign(amz_date: str, scope: str, request: str) -> str:
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def signature(key: bytes, to_sign: str) -> str:
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


class Signer:
    """Signs requests for one region and service; the derived key is kept for its UTC day."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._key_for: tuple[str, str] = ("", "")  # (secret, date) of _key
        self._key = b""

    def _signing_key(self, secret_key: str, date: str) -> bytes:
        if self._key_for != (secret_key, date):
            self._key = signing_key(secret_key, date, self.region, self.service)
            self._key_for = (secret_key, date)
        return self._key

    def authorization(
        self,
        access_key: str,
        secret_key: str,
        amz_date: str,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        payload_hash: str,
    ) -> str:
        """The Authorization header value. headers must include host, x-amz-date (= amz_date,
        YYYYMMDDTHHMMSSZ) and x-amz-content-sha256 (= payload_hash), plus any token header."""
        date = amz_date[:8]
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        request, signed = canonical_request(method, path, query, headers, payload_hash)
        sig = signature(self._signing_key(secret_key, date), string_to_sign(amz_date, scope, request))
        return f"{ALGORITHM} Credential={access_key}/{scope},SignedHeaders={signed},Signature={sig}"
