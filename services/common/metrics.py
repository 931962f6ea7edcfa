"""Prometheus metrics (prometheus-client, the process-wide default registry) and the HTTP endpoint.

Every metric of every service is defined here, so the list is in one place; a process that runs
several services (`mailstack serve`) exposes them all on one endpoint. The endpoint (settings
metrics_port, 0 = off) answers:
  GET /metrics  prometheus_client's exposition: the Prometheus text format, or OpenMetrics when the
                Accept header asks for it; gzip when Accept-Encoding allows; HEAD answers the headers
  GET /ready    200 once the services started (and, for frontends, the mailstore answers its
                gRPC health check); 503 before, and from the moment shutdown begins
  GET /live     200 while the event loop runs. This server is on the loop that serves the mail
                protocols, so a stuck loop leaves /live unanswered and the probe times out; 503
                when the loop's heartbeat is older than LIVE_STALE (its task died). A TCP accept
                on the mail port proves nothing: the kernel accepts while the loop is frozen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, make_asgi_app

from mailstack import __version__

log = logging.getLogger("mailstack.metrics")

# Seconds, from a cached metadata read (sub-millisecond) to a large S3 PUT or a slow client.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

SMTP_MESSAGES = Counter(
    "mailstack_smtp_messages",
    "SMTP messages accepted, and transactions or recipients rejected, by reason",
    ["result", "reason"],
)
SMTP_AUTH_RESULTS = Counter(
    "mailstack_smtp_auth_results",
    "Inbound sender authentication results (ADR 0033) by method (spf, dkim, dmarc, arc) and result",
    ["method", "result"],
)
SESSIONS = Gauge("mailstack_sessions", "Open client connections (sessions) by protocol, now", ["protocol"])
CONNECTIONS = Counter(
    "mailstack_connections", "Client connections admitted, by protocol (the refused: connections_refused)", ["protocol"]
)
COMMANDS = Counter(
    "mailstack_commands",
    "Client commands by protocol, command and result (imap: ok/no/bad; pop3: ok/err; smtp: ok/temporary/permanent by"
    " reply class; error: the command raised, e.g. the client left)",
    ["protocol", "command", "result"],
)
TLS_HANDSHAKES = Counter(
    "mailstack_tls_handshakes",
    "TLS handshakes on the mail ports (implicit TLS and STARTTLS), by protocol and result (ok, failed)",
    ["protocol", "result"],
)
COMMAND_SECONDS = Histogram(
    "mailstack_command_duration_seconds",
    "Time from a client command to its reply, by protocol and command",
    ["protocol", "command"],
    buckets=LATENCY_BUCKETS,
)
STORAGE_SECONDS = Histogram(
    "mailstack_storage_duration_seconds",
    "Time of one storage call in the mailstore, by store (blob, metadata, events, quota) and operation",
    ["store", "operation"],
    buckets=LATENCY_BUCKETS,
)
STORAGE_ERRORS = Counter(
    "mailstack_storage_errors",
    "Storage calls that failed (store unavailable, or a bug), by store and operation",
    ["store", "operation"],
)
AUTH_TOTAL = Counter(
    "mailstack_auth",
    "Logins by protocol (imap, pop3, smtp, send) and result (ok, failed, throttled, logout)",
    ["protocol", "result"],
)
CONNECTIONS_REFUSED = Counter(
    "mailstack_connections_refused",
    "Client connections refused at the door, by protocol and reason (total, per_ip, shutdown)",
    ["protocol", "reason"],
)
POP3_RETRIEVED = Counter("mailstack_pop3_messages_retrieved", "Messages sent by POP3 RETR")
POP3_DELETED = Counter("mailstack_pop3_messages_deleted", "Messages expunged at POP3 QUIT")
POP3_READ_AHEAD_BYTES = Gauge(
    "mailstack_pop3_read_ahead_bytes", "Message bytes POP3 sessions hold fetched ahead of RETR (pop3_read_ahead_bytes)"
)
IMAP_READ_AHEAD_BYTES = Gauge(
    "mailstack_imap_read_ahead_bytes",
    "Message bytes IMAP sessions hold fetched ahead of FETCH BODY[] (imap_read_ahead_bytes)",
)

# Sending (ADR 0008). The worker counts attempts; the mailstore, which decides each recipient's
# fate from the reported replies, counts deliveries, deferrals and bounces. A reason is an RFC 3463
# enhanced status code ("4.4.7": delivery time expired).
BLOB_CACHE_LOOKUPS = Counter(
    "mailstack_blob_cache_lookups", "Reads of message bodies from the cache in front of S3, by result", ["result"]
)
BLOB_CACHE_BYTES = Gauge("mailstack_blob_cache_bytes", "Bytes of message bodies held by the cache in front of S3")
SEND_CALLS = Counter(
    "mailstack_send_calls",
    "gRPC Send calls by result (accepted, duplicate, refused, rate_limited, invalid, error)",
    ["result"],
)
# Issue 13: a From/Sender the caller may not use, a header readers could disagree on, a rate limit.
SENDING_REFUSED = Counter(
    "mailstack_sending_refused",
    "Send calls and SMTP submissions the mailstore refused, by api (send, submission) and reason"
    " (sender, header, rate)",
    ["api", "reason"],
)
OUTBOUND_QUEUED = Counter("mailstack_outbound_queued", "Remote recipients put on the outbound queue")
OUTBOUND_ATTEMPTS = Counter(
    "mailstack_outbound_attempts",
    "Outbound delivery attempts per recipient, by result (delivered, temporary, permanent)",
    ["result"],
)
OUTBOUND_DELIVERIES = Counter("mailstack_outbound_deliveries", "Remote recipients delivered")
OUTBOUND_DEFERRALS = Counter(
    "mailstack_outbound_deferrals", "Remote recipients deferred for a retry, by status code", ["reason"]
)
OUTBOUND_BOUNCES = Counter(
    "mailstack_outbound_bounces", "Recipients bounced (refused or expired), by status code", ["reason"]
)
OUTBOUND_QUEUE_DEPTH = Gauge(
    "mailstack_outbound_queue_depth",
    "Messages on the outbound queue with a recipient still pending (the whole queue, as this mailstore last saw it)",
)
OUTBOUND_QUEUE_OLDEST = Gauge(
    "mailstack_outbound_queue_oldest_age_seconds",
    "Age of the oldest message on the outbound queue with a recipient still pending (0: empty queue)",
)
DELIVERIES = Counter(
    "mailstack_deliveries",
    "Recipients of the mailstore's local deliveries (SMTP, submission, Send API, DSNs) by result: delivered,"
    " over_quota, too_big_for_quota, unknown, invalid, not_local, temp_failure",
    ["result"],
)
REDIS_UP = Gauge(
    "mailstack_redis_up", "1 while the Redis of a store (events, quota) answers PING, else 0 (mailstore)", ["store"]
)
QUOTA_REPAIR_PENDING = Gauge(
    "mailstack_quota_repair_pending",
    "1 while this mailstore knows its quota counters missed a change and waits to recompute them (ADR 0016)",
)
BUILD_INFO = Info("mailstack_build", "The running mailstack: version")
BUILD_INFO.info({"version": __version__})

# The internal gRPC API's refusals (ADR 0009): reason unauthenticated or permission_denied.
GRPC_REFUSALS = Counter("mailstack_grpc_refusals", "Internal gRPC calls refused, by reason", ["reason"])
# The mail listeners' certificates (services/common/certificates.py); alerts fire days before expiry.
TLS_CERT_EXPIRY = Gauge(
    "mailstack_tls_certificate_expiry_timestamp_seconds",
    "notAfter of each TLS certificate the mail listeners serve, as unix time, by name (its first DNS name)",
    ["name"],
)

EVENT_LOOP_LAG = Gauge(
    "mailstack_event_loop_lag_seconds",
    "How late the event loop ran its last heartbeat (a second apart): time spent in code that blocks the loop",
)
# The spam filter (rspamd) on inbound SMTP: its action per message, or what failing open/closed did.
SPAM_FILTER_RESULTS = Counter(
    "mailstack_spam_filter_results",
    "Inbound messages by the spam filter's action (no_action, add_header, ...; unfiltered, tempfail when it failed)",
    ["result"],
)
SPAM_FILTER_ERRORS = Counter(
    "mailstack_spam_filter_errors", "Spam filter calls that failed, by reason (timeout, connect, protocol)", ["reason"]
)

OTHER_COMMAND = "other"  # the label of a command name outside a protocol's fixed set


def count_command(protocol: str, command: str, result: str) -> None:
    """One answered command; `command` comes from the protocol's fixed set (else OTHER_COMMAND)."""
    COMMANDS.labels(protocol, command, result).inc()


def count_tls_handshake(protocol: str, ok: bool) -> None:
    TLS_HANDSHAKES.labels(protocol, "ok" if ok else "failed").inc()


READ_TIMEOUT = 10.0  # seconds for a scraper to send its request
HEARTBEAT = 1.0  # seconds between the loop's heartbeats
LIVE_STALE = 10.0  # a heartbeat older than this: /live answers 503
STALL_LOG = 5.0  # the watchdog thread logs where the loop is stuck once it is this late
MAX_REQUEST_HEAD = 8192

ReadyCheck = Callable[[], Awaitable[bool]]


class LoopHeartbeat:
    """A task on the event loop notes the time every HEARTBEAT seconds; a watchdog thread logs the
    loop thread's stack when the note is STALL_LOG late (once per stall), which names the code that
    froze the loop. (A C call that keeps the GIL, such as a regex, stops the watchdog too.)"""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._loop_thread = 0

    def age(self) -> float:
        return time.monotonic() - self.last

    def start(self) -> None:
        self.last = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="loop-heartbeat")
        self._stopped.clear()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2 * HEARTBEAT)
            self._thread = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            now = time.monotonic()
            EVENT_LOOP_LAG.set(max(0.0, now - self.last - HEARTBEAT))
            self.last = now

    def _watch(self) -> None:
        reported = 0.0  # the heartbeat a stall was logged for
        while not self._stopped.wait(HEARTBEAT):
            last = self.last
            if time.monotonic() - last < STALL_LOG or last == reported:
                continue
            reported = last
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"
            log.error("event loop blocked for %.0f s, in:\n%s", time.monotonic() - last, stack)


class MetricsServer:
    """A small asyncio HTTP/1.1 server for /metrics, /ready and /live (one request per connection),
    on the event loop of the services it reports on."""

    def __init__(self, host: str, port: int, ready: ReadyCheck) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._server: asyncio.Server | None = None
        self.heartbeat = LoopHeartbeat()

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.heartbeat.start()
        log.info("metrics listening", extra={"address": self.address})

    async def stop(self) -> None:
        await self.heartbeat.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, response = await self._answer(head)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        except Exception:  # a bug answering one request: that request fails, the endpoint stays
            log.exception("metrics request failed")
            method, response = "GET", _plain("500 Internal Server Error", "internal error\n")
        status, headers, body = response
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}"]
        try:
            writer.write("\r\n".join([*lines, "Connection: close", "", ""]).encode("latin-1"))
            if method != "HEAD":  # RFC 9110 §9.3.2: the GET's headers, no content
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> tuple[str, Response]:
        if len(head) > MAX_REQUEST_HEAD:
            return "GET", _plain("431 Request Header Fields Too Large", "too large\n")
        request = parse_request(head)
        if request.method not in ("GET", "HEAD"):
            return "GET", _plain("405 Method Not Allowed", "GET only\n", [("Allow", "GET, HEAD")])
        if request.path == "/metrics":
            if not request.utf8:  # prometheus_client decodes the query and headers as UTF-8
                return request.method, _plain("400 Bad Request", "query and headers must be UTF-8\n")
            return request.method, await exposition(request)
        if request.path == "/ready":
            return request.method, await self._readiness()
        if request.path in ("/live", "/healthz"):
            # Answered here, on the loop: a stuck loop does not answer at all (the probe times out).
            late = self.heartbeat.age()
            if late > LIVE_STALE:
                return request.method, _plain("503 Service Unavailable", f"event loop stalled {late:.0f} s\n")
            return request.method, _plain("200 OK", "ok\n")
        return request.method, _plain("404 Not Found", "not found\n")

    async def _readiness(self) -> Response:
        try:
            ready = await self._ready()
        except Exception:
            log.exception("readiness check failed")
            ready = False
        if not ready:
            return _plain("503 Service Unavailable", "not ready\n")
        return _plain("200 OK", "ready\n")


Response = tuple[str, list[tuple[str, str]], bytes]  # status line's tail, headers, body


def _plain(status: str, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return status, [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])], text.encode()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]  # names lowercased, as ASGI has them

    @property
    def utf8(self) -> bool:
        try:
            self.query.encode("latin-1").decode()
            for _, value in self.headers:
                value.decode()
        except UnicodeDecodeError:
            return False
        return True


def parse_request(head: bytes) -> Request:
    """The request line and header fields of an HTTP/1.x request head (RFC 9112 §3, §5)."""
    first, *fields = head.decode("latin-1").split("\r\n")
    method, _, rest = first.partition(" ")
    target = rest.split(" ", 1)[0]
    path, _, query = target.partition("?")
    headers = []
    for field in fields:
        name, colon, value = field.partition(":")
        if colon and name.strip():
            headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
    return Request(method, path, query, headers)


_METRICS_APP = make_asgi_app(REGISTRY)


async def exposition(request: Request) -> Response:
    """/metrics by prometheus_client's own ASGI app: the text format or OpenMetrics as the Accept
    header asks, gzip when Accept-Encoding allows it, `name[]=` filters."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": request.path,
        "query_string": request.query.encode("latin-1"),
        "headers": request.headers,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await _METRICS_APP(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
    status = int(start["status"])
    return f"{status} {HTTPStatus(status).phrase}", headers, body
