"""ARC sealing (RFC 8617) of mail this server forwards, with dkimpy and our domain's DKIM key.

The seal records, under our signature, what our MX found (Authentication-Results with our
authserv-id, written at SMTP time), so the next hop can trust those results although
forwarding broke SPF (and perhaps DKIM). Without results of ours, "arc=none" is recorded when
the message has no ARC chain yet; a chain we did not verify is not sealed (a seal would vouch
for it).
"""

from __future__ import annotations

import dkim
from mailstack.message.dkim_sign import DkimKey

# Signed by the ARC-Message-Signature when present (as DKIM signing does; RFC 8617 §4.1.2).
SEALED_HEADERS = [
    h.encode()
    for h in "from to cc subject date message-id reply-to in-reply-to references mime-version content-type"
    " content-transfer-encoding dkim-signature".split()
]


def seal(data: bytes, key: DkimKey, authserv_id: str) -> bytes:
    """The message with the next ARC set prepended (and an Authentication-Results of ours first
    when it had none), or unchanged when it carries a chain we have no verdict on."""
    if not _has_results_of(data, authserv_id):
        if _has_field(data, b"arc-seal"):
            return data
        data = f"Authentication-Results: {authserv_id}; arc=none\r\n".encode() + data
    headers: list[bytes] = dkim.arc_sign(
        data,
        key.selector.encode(),
        key.domain.encode(),
        key.private_key,
        authserv_id.encode(),
        include_headers=[h for h in SEALED_HEADERS if _has_field(data, h)],
    )
    return b"".join(headers) + data


def _has_field(data: bytes, name: bytes) -> bool:
    return any(line.split(b":", 1)[0].strip().lower() == name for line in _head_lines(data))


def _head_lines(data: bytes) -> list[bytes]:
    end = data.find(b"\r\n\r\n")
    return data[: end if end >= 0 else len(data)].split(b"\r\n")


def _has_results_of(data: bytes, authserv_id: str) -> bool:
    for line in _head_lines(data):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authentication-results":
            if value.split(b";")[0].strip().lower() == authserv_id.lower().encode():
                return True
    return False
