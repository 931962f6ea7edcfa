"""A small asyncio S3 client for the blob store's hot path: GET, PUT and DELETE of one object (ADR 0042).

HTTP/1.1 over pooled keep-alive connections on the caller's event loop (no thread hop), requests
signed by sigv4.py. It speaks only what S3 answers to those three calls: a status line, headers, a
body framed by Content-Length or chunked encoding, and an XML error body whose <Code> it reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import random
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

from mailstack.storage.blob.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Signer, uri_encode

MAX_HEAD = 64 * 1024  # status line + headers
MAX_ERROR_BODY = 64 * 1024
BODY_PIECE = 1024 * 1024  # a large body is read in pieces, each under the read timeout
MIN_RATE = 256 * 1024  # bytes/s: slower than this, sending a request body times out
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CODE_RE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]{0,300})</Message>")
_DNS_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_T = TypeVar("_T")


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None


class S3Error(Exception):
    """S3 answered with an error status; code is its <Code> (or the status number without a body)."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(f"{code} (HTTP {status}){': ' + message if message else ''}")
        self.status = status
        self.code = code


class S3Unreachable(Exception):
    """No answer: refused, reset, timed out, or not HTTP. Raised once the retries are spent."""


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A pooled connection the server had already closed: try again on a new one, not an attempt."""


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    # RFC 9112 §4 status line, §5 fields; names are case-insensitive.
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def error_from(status: int, body: bytes) -> S3Error:
    code = _CODE_RE.search(body)
    message = _MESSAGE_RE.search(body)
    return S3Error(
        status,
        code.group(1).decode("utf-8", "replace") if code else str(status),
        message.group(1).decode("utf-8", "replace") if message else "",
    )


class S3Client:
    """GET/PUT/DELETE of objects in one bucket. Bounded: at most max_connections open, each read
    and connect under its timeout, max_attempts tries of a request that failed for want of an answer
    or with 429/5xx (exponential backoff with jitter between them)."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        region: str,
        credentials: Callable[[], Credentials | None],
        *,
        path_style: bool = True,
        max_connections: int = 16,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 3,
        idle_seconds: float = 30.0,
        body_md5: bool | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"S3 endpoint {endpoint!r}: http(s)://HOST[:PORT] expected")
        self._tls = parts.scheme == "https"
        # None: a signed Content-MD5 where nothing else protects the body (plain HTTP), none under TLS.
        self._body_md5 = not self._tls if body_md5 is None else body_md5
        self._ssl = ssl.create_default_context() if self._tls else None
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        netloc = parts.netloc.rpartition("@")[2]
        # Virtual-hosted style needs a DNS-safe bucket name and a host name (not an IP address).
        if path_style or not _DNS_BUCKET_RE.fullmatch(bucket) or _is_ip(self._host):
            self._host_header, self._base_path = netloc, "/" + uri_encode(bucket, keep_slash=False) + "/"
        else:
            self._host_header, self._base_path = f"{bucket}.{netloc}", "/"
            self._host = f"{bucket}.{self._host}"
        self._credentials = credentials
        self._signer = Signer(region)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max(1, max_attempts)
        self._idle_seconds = idle_seconds
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public calls

    async def put(self, key: str, data: bytes) -> None:
        # UNSIGNED-PAYLOAD: TLS protects the body in transit. Over plain HTTP a signed Content-MD5
        # does: SeaweedFS, MinIO and AWS all refuse a body that does not match it (BadDigest),
        # where SeaweedFS does not check a signed x-amz-content-sha256 (ADR 0042).
        headers = {"content-type": "application/octet-stream"}
        if self._body_md5:
            headers["content-md5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
        await self._simple("PUT", key, data, UNSIGNED_PAYLOAD, headers)

    async def delete(self, key: str) -> None:
        await self._simple("DELETE", key, b"", EMPTY_SHA256, {})

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end); S3Error 416 (InvalidRange) when start is at or past the end."""
        return await self._simple("GET", key, b"", EMPTY_SHA256, _range_header(start, end))

    async def stream(self, key: str, start: int, end: int | None, chunk_size: int) -> AsyncIterator[bytes]:
        """Like get, in chunks of at most chunk_size read as the caller asks for them. The connection
        goes back to the pool only when the body was read to its end; abandoned, it is closed."""
        conn, status, headers = await self._retrying(
            lambda: self._open_ok("GET", key, b"", EMPTY_SHA256, _range_header(start, end))
        )
        reusable = False
        try:
            length = headers.get("content-length")
            if length is None or headers.get("transfer-encoding"):
                body = await self._read_body(conn, status, headers)
                reusable = self._keep_alive(status, headers)
                for i in range(0, len(body), chunk_size):
                    yield body[i : i + chunk_size]
                return
            remaining = int(length)
            while remaining > 0:
                async with asyncio.timeout(self._read_timeout):
                    chunk = await conn.reader.readexactly(min(chunk_size, remaining))
                remaining -= len(chunk)
                yield chunk
            reusable = self._keep_alive(status, headers)
        except (OSError, EOFError, ValueError) as exc:
            # Mid-body: the caller has chunks already, so no retry here.
            raise S3Unreachable(f"{self._host}:{self._port}: {exc or type(exc).__name__}") from exc
        finally:
            self._release(conn, reusable)

    async def close(self) -> None:
        closing = list(self._idle)
        self._idle.clear()
        for conn in closing:
            conn.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.gather(*(conn.writer.wait_closed() for conn in closing))

    # -- one request

    async def _open_ok(
        self, method: str, key: str, body: bytes, payload: str, extra: dict[str, str]
    ) -> tuple[_Connection, int, dict[str, str]]:
        """_open, with an error status read and raised as S3Error (the connection then released)."""
        conn, status, headers = await self._open(method, key, body, payload, extra)
        if status < 300:
            return conn, status, headers
        raise error_from(status, await self._read_and_release(conn, status, headers))

    async def _read_and_release(self, conn: _Connection, status: int, headers: dict[str, str]) -> bytes:
        """The whole body; the connection back to the pool when it can carry another request."""
        reusable = False
        try:
            data = await self._read_body(conn, status, headers)
            reusable = self._keep_alive(status, headers)
        finally:
            self._release(conn, reusable)
        return data

    async def _simple(self, method: str, key: str, body: bytes, payload: str, extra: dict[str, str]) -> bytes:
        async def once() -> bytes:
            return await self._read_and_release(*await self._open_ok(method, key, body, payload, extra))

        return await self._retrying(once)

    async def _retrying(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        tries = 0
        while True:
            try:
                return await attempt()
            except _Stale:
                continue  # that pooled connection is gone; the pool is finite and a new one is never stale
            except S3Error as exc:
                if exc.status not in _RETRY_STATUSES:
                    raise
                failure: Exception = exc
            except (OSError, EOFError, asyncio.LimitOverrunError, ValueError) as exc:
                # OSError covers refused, reset, TLS errors and TimeoutError; EOFError a cut-off answer.
                failure = S3Unreachable(f"{self._host}:{self._port}: {exc or type(exc).__name__}")
            tries += 1
            if tries >= self._max_attempts:
                raise failure
            await asyncio.sleep(random.uniform(0, min(1.0, 0.05 * 2**tries)))

    def _request_head(self, method: str, key: str, body: bytes, payload: str, extra: dict[str, str]) -> bytes:
        creds = self._credentials()
        if creds is None:
            raise S3Error(0, "NoCredentials", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)")
        path = self._base_path + uri_encode(key, keep_slash=True)
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        headers = {"host": self._host_header, "x-amz-content-sha256": payload, "x-amz-date": amz_date, **extra}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        auth = self._signer.authorization(
            creds.access_key, creds.secret_key, amz_date, method, path, {}, headers, payload
        )
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), f"authorization: {auth}"]
        if body or method == "PUT":
            lines.append(f"content-length: {len(body)}")
        lines += ("", "")
        return "\r\n".join(lines).encode()

    async def _open(
        self, method: str, key: str, body: bytes, payload: str, extra: dict[str, str]
    ) -> tuple[_Connection, int, dict[str, str]]:
        """Send the request and read the answer's head; the caller owns the connection (and its
        pool slot) until it gives it to _release."""
        request = self._request_head(method, key, body, payload, extra)
        self._bind_loop()
        await self._slots.acquire()
        conn: _Connection | None = None
        reused = False
        try:
            conn, reused = self._pooled(), True
            if conn is None:
                conn, reused = await self._connect(), False
            # One write for a small body: one segment, one syscall.
            if len(body) <= BODY_PIECE:
                conn.writer.write(request + body)
            else:
                conn.writer.write(request)
                conn.writer.write(body)
            # A big body may take a while to leave: its time grows with its size, at MIN_RATE.
            async with asyncio.timeout(self._read_timeout + len(body) / MIN_RATE):
                await conn.writer.drain()
            status, headers = await self._read_head(conn)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            self._slots.release()
            if reused and _nothing_came(exc):
                raise _Stale from exc
            raise
        return conn, status, headers

    async def _read_head(self, conn: _Connection) -> tuple[int, dict[str, str]]:
        async with asyncio.timeout(self._read_timeout):
            while True:
                status, headers = _parse_head((await conn.reader.readuntil(b"\r\n\r\n"))[:-4])
                if status >= 200:
                    return status, headers
                # RFC 9110 §15.2: an interim 1xx answer (we send no Expect) comes before the real one.

    def _bind_loop(self) -> None:
        # Connections and the semaphore belong to one event loop; a store used from another
        # (a CLI tool calling asyncio.run twice) starts afresh there.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            for conn in self._idle:
                conn.close()
            self._idle.clear()
            self._slots = asyncio.Semaphore(self._max_connections)
            self._loop = loop

    def _pooled(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the fewest connections stay warm
            if conn.reader.at_eof() or now - conn.idle_since > self._idle_seconds:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self) -> _Connection:
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl, limit=MAX_HEAD)
        return _Connection(reader, writer)

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    @staticmethod
    def _keep_alive(status: int, headers: dict[str, str]) -> bool:
        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; a body without framing ends at close
        # (§6.3: a 204 or 304 has none, whatever its headers say).
        framed = (
            status in (204, 304)
            or "content-length" in headers
            or "chunked" in headers.get("transfer-encoding", "").lower()
        )
        return framed and headers.get("connection", "").lower() != "close"

    async def _read_body(
        self,
        conn: _Connection,
        status: int,
        headers: dict[str, str],
    ) -> bytes:
        """The whole body (RFC 9112 §6.3); an error body is capped at MAX_ERROR_BODY."""
        if status in (204, 304) or status < 200:
            return b""
        limit = MAX_ERROR_BODY if status >= 300 else None
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked(conn, limit)
        length = headers.get("content-length")
        if length is None:
            async with asyncio.timeout(self._read_timeout):
                return await conn.reader.read(limit or -1)
        size = int(length)
        if size < 0 or (limit is not None and size > limit):
            raise ValueError(f"response body of {length} bytes refused")
        pieces = []
        while size > 0:
            async with asyncio.timeout(self._read_timeout):
                pieces.append(await conn.reader.readexactly(min(size, BODY_PIECE)))
            size -= len(pieces[-1])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _read_chunked(self, conn: _Connection, limit: int | None) -> bytes:
        # RFC 9112 §7.1: hex size lines, each chunk followed by CRLF, a zero chunk, then trailers.
        pieces: list[bytes] = []
        total = 0
        async with asyncio.timeout(self._read_timeout):
            while True:
                size = int((await conn.reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while await conn.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailer fields
                    return b"".join(pieces)
                total += size
                if limit is not None and total > limit:
                    raise ValueError("chunked response body too large")
                pieces.append((await conn.reader.readexactly(size + 2))[:-2])


def _nothing_came(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.IncompleteReadError):
        return not exc.partial
    return isinstance(exc, (ConnectionResetError, BrokenPipeError))


def _range_header(start: int, end: int | None) -> dict[str, str]:
    if start <= 0 and end is None:
        return {}
    # RFC 9110 §14.1.2: the last byte position is inclusive.
    return {"range": f"bytes={start}-{'' if end is None else end - 1}"}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
