"""The spam filter hook of inbound SMTP: rspamd asked over HTTP, its action applied.

reject -> 550 5.7.1, soft reject and greylist -> 451 4.7.1; add header and rewrite subject
deliver with X-Spam-Flag: YES (and rspamd's new Subject); every delivered message gets its
score and symbols in X-Spam-* headers. When rspamd is down, late or answers nonsense, the
setting spam_filter_fail says whether the message goes through unfiltered (open) or is
deferred with 451 4.7.1 (closed); both are counted (mailstack_spam_filter_*).
"""

from __future__ import annotations

import asyncio
import email.header
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailstack.services.common.config import Settings
from mailstack.services.common.metrics import SPAM_FILTER_ERRORS, SPAM_FILTER_RESULTS
from mailstack.services.smtp import rspamd_protocol
from mailstack.services.smtp.rspamd_protocol import Envelope, ProtocolError, Verdict

log = logging.getLogger("mailstack.smtp")

MAX_SYMBOLS_HEADER = 900  # characters of X-Spam-Symbols (folded); the rest is cut with "..."
MAX_SUBJECT = 900  # characters of a rewritten Subject
OUR_FIELDS = (b"x-spam-flag:", b"x-spam-score:", b"x-spam-action:", b"x-spam-symbols:", b"x-spam-checker:")

REJECTED = "550 5.7.1 Message rejected as spam"
SOFT_REJECTED = "451 4.7.1 Message deferred by the spam filter, try again later"
GREYLISTED = "451 4.7.1 Greylisted, try again later"
UNAVAILABLE = "451 4.7.1 Spam filter unavailable, try again later"

_REFUSALS = {"reject": REJECTED, "soft reject": SOFT_REJECTED, "greylist": GREYLISTED}


@dataclass(frozen=True)
class Screened:
    reply: str  # a refusal for the DATA reply, or "" to deliver
    reason: str  # for the SMTP counters and log line
    header: bytes = b""  # X-Spam-* fields to add below the trace fields
    content: bytes = b""  # the message, its Subject rewritten when rspamd said so


class SpamFilter:
    def __init__(self, settings: Settings) -> None:
        url = urlsplit(settings.spam_filter_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"spam_filter_url: expected http://HOST:PORT, got {settings.spam_filter_url!r}")
        if settings.spam_filter_fail not in ("open", "closed"):
            raise ValueError(f"spam_filter_fail: expected open or closed, got {settings.spam_filter_fail!r}")
        self.host, self.port = url.hostname, url.port or 11333
        self.timeout = settings.spam_filter_timeout_ms / 1000
        self.fail_open = settings.spam_filter_fail == "open"

    async def screen(self, envelope: Envelope, content: bytes) -> Screened:
        """What to do with one inbound message."""
        try:
            async with asyncio.timeout(self.timeout):
                verdict = await self._check(envelope, content)
        except (TimeoutError, OSError, ProtocolError, asyncio.IncompleteReadError) as err:
            return self._failed(envelope.queue_id, err, content)
        SPAM_FILTER_RESULTS.labels(verdict.action.replace(" ", "_")).inc()
        refusal = _REFUSALS.get(verdict.action)
        if refusal is not None:
            log.info(
                "spam filter queue_id=%s: %s score=%.2f symbols=%s",
                envelope.queue_id, verdict.action, verdict.score, ",".join(n for n, _ in verdict.symbols[:10]),
            )  # fmt: skip
            return Screened(refusal, "spam_" + verdict.action.replace(" ", "_"))
        if verdict.action == "rewrite subject" and verdict.subject:
            content = with_subject(content, verdict.subject)
        return Screened("", "", spam_headers(verdict), without_ours(content))

    def _failed(self, queue_id: str, err: BaseException, content: bytes) -> Screened:
        reason = "connect"
        if isinstance(err, (TimeoutError, ProtocolError, asyncio.IncompleteReadError)):
            reason = "timeout" if isinstance(err, TimeoutError) else "protocol"
        SPAM_FILTER_ERRORS.labels(reason).inc()
        log.warning("spam filter queue_id=%s: %s %s (failing %s)", queue_id, reason, err,
                    "open" if self.fail_open else "closed")  # fmt: skip
        if self.fail_open:
            SPAM_FILTER_RESULTS.labels("unfiltered").inc()
            return Screened("", "", b"X-Spam-Checker: unavailable, not filtered\r\n", without_ours(content))
        SPAM_FILTER_RESULTS.labels("tempfail").inc()
        return Screened(UNAVAILABLE, "spam_filter_unavailable")

    async def _check(self, envelope: Envelope, content: bytes) -> Verdict:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=rspamd_protocol.MAX_HEAD)
        try:
            writer.write(rspamd_protocol.request(f"{self.host}:{self.port}", envelope, len(content)))
            writer.write(content)
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise ProtocolError("reply head too long") from None
            status, length = rspamd_protocol.parse_head(head)
            if length is None:  # Connection: close, the body runs to the end
                body = await reader.read(rspamd_protocol.MAX_BODY + 1)
                if len(body) > rspamd_protocol.MAX_BODY:
                    raise ProtocolError("reply too long")
            else:
                body = await reader.readexactly(length)
            if status != 200:
                raise ProtocolError(f"HTTP {status}: {body[:120]!r}")
            return rspamd_protocol.parse_verdict(body)
        finally:
            writer.close()


def spam_headers(verdict: Verdict) -> bytes:
    """X-Spam-Flag (when rspamd says it is spam), X-Spam-Score, X-Spam-Action, X-Spam-Symbols."""
    lines = []
    if verdict.action in ("add header", "rewrite subject"):
        lines.append("X-Spam-Flag: YES")
    lines.append(f"X-Spam-Score: {verdict.score:.2f} / {verdict.required_score:.2f}")
    lines.append(f"X-Spam-Action: {verdict.action}")
    lines.append("X-Spam-Symbols: " + _symbols(verdict.symbols))
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def _symbols(symbols: list[tuple[str, float]]) -> str:
    """name(score) pairs, folded 4 to a line, cut at MAX_SYMBOLS_HEADER characters."""
    out: list[str] = []
    used = 0
    for index, (name, score) in enumerate(symbols):
        item = f"{name}({score:.2f})"
        if used + len(item) > MAX_SYMBOLS_HEADER:
            out.append("...")
            break
        out.append(item)
        used += len(item) + 2
        if index % 4 == 3 and index + 1 < len(symbols):
            out[-1] += ",\r\n\t"
        elif index + 1 < len(symbols):
            out[-1] += ", "
    return "".join(out)


def with_subject(content: bytes, subject: str) -> bytes:
    """The message with its Subject field (folded lines included) replaced, or one added."""
    subject = "".join(c for c in subject if c >= " " and c != "\x7f")[:MAX_SUBJECT]
    if subject.isascii():
        field = f"Subject: {subject}\r\n".encode("ascii")
    else:  # RFC 2047 encoded words, folded
        encoded = email.header.Header(subject, "utf-8", header_name="Subject").encode("\r\n")
        field = f"Subject: {encoded}\r\n".encode("ascii")
    span = _field_span(content, b"subject:")
    if span is None:
        return field + content
    return content[: span[0]] + field + content[span[1] :]


def without_ours(content: bytes) -> bytes:
    """The message without X-Spam-* fields of the names we write: a sender's own (an
    "X-Spam-Score: -50") must not pass for ours, which sieve rules and clients read. One pass
    over the header lines, and no copy at all in the common case of none."""
    end = content.find(b"\r\n\r\n")
    head_end = len(content) if end < 0 else end + 2
    if b"\r\nx-spam-" not in b"\r\n" + content[:head_end].lower():
        return content
    kept: list[bytes] = []
    dropping = False
    start = 0
    while start < head_end:
        stop = content.find(b"\r\n", start, head_end)
        stop = head_end if stop < 0 else stop + 2
        line = content[start:stop]
        if line[:1] not in (b" ", b"\t"):  # a new field; continuation lines follow their field
            dropping = line.lower().startswith(OUR_FIELDS)
        if not dropping:
            kept.append(line)
        start = stop
    return b"".join(kept) + content[head_end:]


def _field_span(content: bytes, name: bytes) -> tuple[int, int] | None:
    """(start, end) of the first header field `name` (lower case, with its colon) and its folded
    continuation lines, within the header section (RFC 5322 §2.2)."""
    end = content.find(b"\r\n\r\n")
    head_end = len(content) if end < 0 else end + 2
    lines: list[tuple[int, int]] = []
    start = 0
    while start < head_end:
        stop = content.find(b"\r\n", start, head_end)
        stop = head_end if stop < 0 else stop + 2
        lines.append((start, stop))
        start = stop
    for index, (start, stop) in enumerate(lines):
        if content[start : start + len(name)].lower() == name:
            for cont_start, cont_stop in lines[index + 1 :]:
                if content[cont_start : cont_start + 1] not in (b" ", b"\t"):
                    break
                stop = cont_stop
            return start, stop
    return None
