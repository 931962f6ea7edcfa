"""SMTP replies with enhanced status codes (RFC 5321 §4.2, RFC 3463, RFC 2034).

Every reply this service writes goes through `enhance()`: our own replies already
carry an enhanced code; aiosmtpd's stock replies ("503 Error: need MAIL command")
get the one that fits their reply code, because once ENHANCEDSTATUSCODES is
advertised every 2xx/4xx/5xx reply must carry one (RFC 2034 §3), except the
greeting and the replies to HELO/EHLO.
"""

from __future__ import annotations

import re

from mailstack.v1 import mailstore_pb2 as pb

# --- replies of this service (code, enhanced code, text)
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
AUTH_OK = "235 2.7.0 Authentication successful"

RECIPIENT_UNKNOWN = "550 5.1.1 Recipient address rejected: user unknown"
RECIPIENT_INVALID = "501 5.1.3 Bad recipient address syntax"
RELAY_DENIED = "554 5.7.1 Relay access denied"
SUBMISSION_AUTH_REQUIRED = "554 5.7.1 Authentication required to send mail on this port"
REMOTE_NOT_YET = "550 5.7.1 Delivery to other domains is not available yet (no outbound queue)"
SENDER_NOT_OWNED = "553 5.7.1 Sender address rejected: not owned by the authenticated user"
# At DATA, RFC 5321 §4.3.2 lists 550 and 450 for refusals "for policy reasons" (553 belongs to MAIL);
# 5.7.1 / 4.7.1: delivery not authorized / not now (RFC 3463 §3.8).
RATE_LIMITED = "450 4.7.1 Sending limit reached for this account, try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
MAILBOX_FULL = "452 4.2.2 Mailbox full, try again later"
TOO_BIG_FOR_MAILBOX = "552 5.2.2 Message is larger than the mailbox can ever hold"
TOO_BIG = "552 5.3.4 Message too big"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets)"
BARE_NEWLINE = "554 5.5.2 Bare CR or LF in message data refused (RFC 5321 2.3.8)"
TEMP_FAILURE = "451 4.3.0 Temporary storage failure, try again later"
# RFC 3463 4.3.1 "mail system full" (RFC 1870 §6.1 at MAIL): the in-flight budget is spent.
INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage, try again later"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_TOO_MANY = "454 4.7.0 Too many login attempts, try again later"
AUTH_TEMP_FAILURE = "454 4.7.0 Temporary authentication failure"
AUTH_NOT_HERE = "502 5.5.1 AUTH is not available on this port"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TIMEOUT = "421 4.4.2 Timeout, closing connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"


def header_sender_refused(why: str) -> str:
    """550 5.7.1 with the mailstore's reason: one line of printable ASCII (it quotes the client's header)."""
    text = "".join(c if " " <= c <= "~" else "?" for c in why)[:200]
    return f"550 5.7.1 From/Sender not allowed: {text}"


def queued(queue_id: str) -> str:
    # "queued" is what client scripts (and people) look for in the DATA reply.
    return f"250 2.0.0 Ok: queued as {queue_id}"


# RecipientStatus -> reply, at RCPT and for the per-recipient results of Deliver.
RECIPIENT_REPLIES: dict[int, str] = {
    pb.RECIPIENT_UNKNOWN: RECIPIENT_UNKNOWN,
    pb.RECIPIENT_NOT_LOCAL: RELAY_DENIED,
    pb.RECIPIENT_OVER_QUOTA: MAILBOX_FULL,
    pb.RECIPIENT_TOO_BIG_FOR_QUOTA: TOO_BIG_FOR_MAILBOX,
    pb.RECIPIENT_TEMP_FAILURE: TEMP_FAILURE,
    pb.RECIPIENT_INVALID: RECIPIENT_INVALID,
}

# aiosmtpd's stock texts that read better reworded.
_REWORDED: dict[str, str] = {
    "500 Command line too long": LINE_TOO_LONG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "552 Error: Too much mail data": TOO_BIG,
    "454 TLS not available": "454 4.7.0 TLS not available on this port",
}

# Reply code -> enhanced code for replies that have none (RFC 3463 §3).
_DEFAULT_ENHANCED: dict[str, str] = {
    "220": "2.0.0",  # STARTTLS "Ready to start TLS"
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?: |$)")


def enhance(reply: str) -> str:
    """The reply with an enhanced status code (single-line 2xx/4xx/5xx replies only)."""
    reply = _REWORDED.get(reply, reply)
    code, sep, text = reply[:3], reply[3:4], reply[4:]
    if sep != " " or code[:1] not in "245" or not code.isdigit():
        return reply  # 3xx continuations, "250-" EHLO lines, anything odd
    if _ENHANCED.match(text):
        return reply
    enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code} {enhanced} {text}".rstrip()
