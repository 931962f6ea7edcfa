"""Who a message says it is from, read the way this mailstore reads it, and the sending limits.

The From and Sender a reader sees come from the mailstore's own parser (the one that computes
IMAP ENVELOPE, mailstack.message.addresses), so a check here cannot disagree with what is shown.
Constructions that other parsers read differently are refused outright: a header field name followed by white space
before its colon (RFC 5322 §3.6.8; the obsolete §4.5 form is the "From : x" trick), a line in the
header that is no field, a second From or Sender field (RFC 5322 §3.6), more than one From address,
groups, source routes, and a From value that Python's parser reads as another address (issue 13 §3).
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mailstack.message import headers
from mailstack.message.addresses import MAX_ADDRESS_HEADER, MISSING_DOMAIN, MISSING_MAILBOX, parse_addresses
from mailstack.services.common.metrics import SENDING_REFUSED
from mailstack.storage.errors import NotAllowed

log = logging.getLogger("mailstack.mailstore.sending")

MAX_LIMIT_KEYS = 10_000  # senders tracked before idle ones are dropped


class SenderRefused(NotAllowed):
    """The message's From/Sender is not the caller's, or cannot be read unambiguously."""


class RateLimited(Exception):
    """A sending limit is reached; the text says which and when to retry (temporary)."""


@dataclass(frozen=True, slots=True)
class HeaderSenders:
    from_address: str  # "" when the message has no From field
    sender: str  # "" when it has no Sender field

    @property
    def addresses(self) -> list[str]:
        return [a for a in (self.from_address, self.sender) if a]


def _one_mailbox(name: str, value: bytes) -> str:
    """The single mailbox of a From/Sender value, or SenderRefused."""
    if len(value) > MAX_ADDRESS_HEADER:
        raise SenderRefused(f"the {name} field is too long")
    parsed = parse_addresses(value)
    if len(parsed) != 1:
        raise SenderRefused(f"the {name} field must hold exactly one address, not {len(parsed)}")
    [address] = parsed
    if not address.host or address.host == MISSING_DOMAIN or address.mailbox == MISSING_MAILBOX:
        raise SenderRefused(f"the {name} field holds no complete address")
    if address.adl:
        raise SenderRefused(f"the {name} field holds a source route")
    mailbox = f"{address.mailbox.decode('utf-8', 'replace')}@{address.host.decode('utf-8', 'replace')}"
    # A second reading by Python's parser: receivers differ, and one that reads another address
    # (or two) where ENVELOPE reads ours would show a sender nobody checked.
    other = email.utils.getaddresses([value.decode("utf-8", "replace")])
    if len(other) != 1 or other[0][1].replace('"', "").lower() != mailbox.replace('"', "").lower():
        raise SenderRefused(f"the {name} field can be read as another address")
    return mailbox


def header_senders(data: bytes) -> HeaderSenders:
    """From and Sender of a message's top-level header as ENVELOPE reads them; SenderRefused for
    any construction that lets readers disagree."""
    end = headers.header_end(data, 0, len(data))
    fields = headers.split_fields(data[:end])
    if end < len(data) and sum(len(text) for _, text in fields) == end:
        # No blank line ended the header: header_end stopped at a line that is no field, where other
        # parsers skip the line and read on (a From after it would be theirs alone).
        raise SenderRefused("a line in the header is not a header field (RFC 5322 §2.2)")
    values: dict[bytes, list[bytes]] = {b"from": [], b"sender": []}
    for field_name, text in fields:
        if not field_name:
            raise SenderRefused("a line in the header is not a header field (RFC 5322 §2.2)")
        if text[len(field_name) : len(field_name) + 1] in (b" ", b"\t"):
            shown = field_name.decode("ascii", "replace")[:40]
            raise SenderRefused(f"white space before the colon of header field {shown!r} (RFC 5322 §3.6.8)")
        key = field_name.lower()
        if key in values:
            values[key].append(headers.field_value(text))
    for key, found in values.items():
        if len(found) > 1:  # RFC 5322 §3.6: From exactly once, Sender at most once
            raise SenderRefused(f"more than one {key.decode().title()} field")
    return HeaderSenders(
        _one_mailbox("From", values[b"from"][0]) if values[b"from"] else "",
        _one_mailbox("Sender", values[b"sender"][0]) if values[b"sender"] else "",
    )


def refused(api: str, reason: str, who: str, why: str) -> None:
    """Log and count a refusal (api: send | submission; reason: sender | header | rate)."""
    SENDING_REFUSED.labels(api, reason).inc()
    log.warning("sending refused", extra={"api": api, "reason": reason, "client": who, "detail": why})


class SendingLimiter:
    """Messages and recipients per sender (an account or a token) in a sliding window.

    In this process: the mailstore is the one place every submission and Send call passes, so
    the limit holds however many SMTP frontends there are. A call is counted when it starts
    (refused calls are not), so parallel calls cannot all slip under the limit."""

    def __init__(
        self, window: float, max_messages: int, max_recipients: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.max_messages = max_messages
        self.max_recipients = max_recipients
        self.clock = clock
        self._sent: dict[str, deque[tuple[float, int]]] = {}
        self._recipients: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self.window > 0 and (self.max_messages > 0 or self.max_recipients > 0)

    def take(self, key: str, recipients: int) -> None:
        """Count one message to `recipients` for `key`, or raise RateLimited."""
        if not self.enabled:
            return
        now = self.clock()
        if len(self._sent) > MAX_LIMIT_KEYS:
            self._forget_idle(now)
        sent = self._sent.setdefault(key, deque())
        self._expire(key, sent, now)
        total = self._recipients.get(key, 0)
        if self.max_messages and len(sent) + 1 > self.max_messages:
            what = f"{len(sent)} messages"
        elif self.max_recipients and total + recipients > self.max_recipients and sent:
            what = f"{total} recipients"  # (one message alone is never refused for its size here)
        else:
            sent.append((now, recipients))
            self._recipients[key] = total + recipients
            return
        retry = int(sent[0][0] + self.window - now) + 1
        raise RateLimited(f"sending limit reached: {what} in the last {int(self.window)} s, retry in {retry} s")

    def _expire(self, key: str, sent: deque[tuple[float, int]], now: float) -> None:
        while sent and sent[0][0] <= now - self.window:
            _, count = sent.popleft()
            self._recipients[key] -= count

    def _forget_idle(self, now: float) -> None:
        for key, sent in list(self._sent.items()):
            self._expire(key, sent, now)
            if not sent:
                del self._sent[key]
                self._recipients.pop(key, None)
