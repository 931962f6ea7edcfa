"""The lean S3 client (storage/blob/s3http.py, ADR 0042) against a real SeaweedFS, and against
scripted HTTP servers for what SeaweedFS will not do on demand (503s, hostile answers, silence)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from mailstack.storage.blob.s3http import Credentials, S3Client, S3Error, S3Unreachable
from mailstack.storage.blob.s3lean import LeanS3BlobStore
from mailstack.storage.errors import BlobNotFound, StorageUnavailable

from tests.fixtures.ports import free_port
from tests.fixtures.s3_server import ACCESS_KEY, SECRET_KEY, s3_client

GOOD = Credentials(ACCESS_KEY, SECRET_KEY)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for a store that resolves its own (the s3_server fixture sets them too)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _client(endpoint: str, bucket: str, creds: Credentials | None = GOOD, **options: Any) -> S3Client:
    return S3Client(endpoint, bucket, "us-east-1", lambda: creds, **options)


@pytest.fixture
async def lean(s3_bucket: tuple[str, str]) -> AsyncIterator[S3Client]:
    client = _client(*s3_bucket)
    yield client
    await client.close()


@pytest.mark.parametrize(
    "key",
    [
        "plain",
        "with space",
        "caf\u00e9/\u2603 snow",
        "dir/sub/leaf",
        "a+b=c&d",
        "100%",
        "tilde~star*",
        "semi;colon:at@",
    ],
)
async def test_keys_round_trip_and_are_stored_as_given(lean: S3Client, s3_bucket: tuple[str, str], key: str) -> None:
    body = key.encode() * 3
    await lean.put(key, body)
    assert await lean.get(key) == body
    # boto3 sees the very key we meant, so the encoding is right and not merely self-consistent.
    listed = s3_client(s3_bucket[0]).list_objects_v2(Bucket=s3_bucket[1])["Contents"]
    assert [o["Key"] for o in listed] == [key]
    await lean.delete(key)
    with pytest.raises(S3Error) as missing:
        await lean.get(key)
    assert (missing.value.status, missing.value.code) == (404, "NoSuchKey")


async def test_unsigned_payload_without_md5_is_accepted(s3_bucket: tuple[str, str]) -> None:
    # What the client sends over TLS; SeaweedFS, MinIO and AWS take it on any transport.
    client = _client(*s3_bucket, body_md5=False)
    await client.put("unsigned", b"body")
    assert await client.get("unsigned") == b"body"
    await client.close()


async def test_body_altered_in_transit_is_refused(s3_bucket: tuple[str, str]) -> None:
    # Over plain HTTP the signature covers the body's Content-MD5: a changed byte is not stored.
    endpoint, bucket = s3_bucket
    tamper = lambda data: data.replace(b"pay 100 EUR", b"pay 999 EUR")  # noqa: E731
    async with _Proxy(int(endpoint.rsplit(":", 1)[1]), tamper) as proxy:
        client = _client(f"http://127.0.0.1:{proxy.port}", bucket)
        with pytest.raises(S3Error) as refused:
            await client.put("invoice", b"please pay 100 EUR")
        assert (refused.value.status, refused.value.code) == (400, "BadDigest")
        await client.close()
    direct = _client(endpoint, bucket)
    with pytest.raises(S3Error, match="NoSuchKey"):
        await direct.get("invoice")
    await direct.close()


async def test_large_object_whole_ranged_and_streamed(lean: S3Client) -> None:
    data = random.Random(3).randbytes(12 * 1024 * 1024 + 5)  # more than one read piece
    await lean.put("big", data)
    assert await lean.get("big") == data
    assert await lean.get("big", 9 * 1024 * 1024, 9 * 1024 * 1024 + 10) == data[9 * 1024 * 1024 :][:10]
    chunks = [c async for c in lean.stream("big", 0, None, 1024 * 1024)]
    assert b"".join(chunks) == data and max(map(len, chunks)) == 1024 * 1024


async def test_range_past_the_end_and_missing_bucket(lean: S3Client, s3_bucket: tuple[str, str]) -> None:
    await lean.put("short", b"0123")
    with pytest.raises(S3Error) as past:
        await lean.get("short", 10)
    assert (past.value.status, past.value.code) == (416, "InvalidRange")
    other = _client(s3_bucket[0], "mailstack-no-such-bucket")
    with pytest.raises(S3Error) as nobucket:
        await other.get("short")
    assert nobucket.value.code == "NoSuchBucket"
    await other.close()


@pytest.mark.parametrize("creds", [Credentials("nobody", SECRET_KEY), Credentials(ACCESS_KEY, "wrong-secret")])
async def test_wrong_credentials_are_a_clear_error_at_once(s3_bucket: tuple[str, str], creds: Credentials) -> None:
    endpoint, bucket = s3_bucket
    client = _client(endpoint, bucket, creds)
    began = time.monotonic()
    with pytest.raises(S3Error) as refused:
        await client.put("k", b"x")
    assert refused.value.status == 403
    assert refused.value.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")
    assert time.monotonic() - began < 2  # a 403 is not retried
    await client.close()
    # Through the store: StorageUnavailable naming the code, as with boto3.
    store = LeanS3BlobStore(bucket, endpoint_url=endpoint)
    store._s3 = _client(endpoint, bucket, creds)
    with pytest.raises(StorageUnavailable, match=refused.value.code):
        await store.put("k", b"x")
    await store.close()


async def test_no_credentials_is_named(s3_bucket: tuple[str, str]) -> None:
    client = _client(*s3_bucket, creds=None)
    with pytest.raises(S3Error, match="AWS_ACCESS_KEY_ID"):
        await client.get("k")


async def test_one_connection_serves_sequential_calls_and_a_dropped_one_is_replaced(
    s3_bucket: tuple[str, str],
) -> None:
    endpoint, bucket = s3_bucket
    async with _Proxy(int(endpoint.rsplit(":", 1)[1])) as proxy:
        client = _client(f"http://127.0.0.1:{proxy.port}", bucket)
        for i in range(20):
            await client.put(f"k{i}", b"body")
            assert await client.get(f"k{i}") == b"body"
            await client.delete(f"k{i}")
        assert proxy.accepted == 1  # keep-alive: 60 requests, one TCP connection
        proxy.drop_all()  # as a server does with idle connections
        await asyncio.sleep(0.05)
        await client.put("after", b"still works")
        assert await client.get("after") == b"still works"
        assert proxy.accepted == 2
        await client.close()


async def test_pool_is_bounded(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    async with _Proxy(int(endpoint.rsplit(":", 1)[1])) as proxy:
        client = _client(f"http://127.0.0.1:{proxy.port}", bucket, max_connections=3)
        await asyncio.gather(*(client.put(f"k{i}", b"x" * 50_000) for i in range(30)))
        assert proxy.accepted <= 3 and proxy.peak <= 3
        await client.close()


@pytest.mark.usefixtures("aws_env")
async def test_server_down_is_unreachable_quickly() -> None:
    client = _client(f"http://127.0.0.1:{free_port()}", "bucket")
    began = time.monotonic()
    with pytest.raises(S3Unreachable):
        await client.put("k", b"x")
    assert time.monotonic() - began < 3
    store = LeanS3BlobStore("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageUnavailable, match=r"Connect call failed|refused"):
        await store.get("k")
    with pytest.raises(StorageUnavailable, match=r"Connect call failed|refused"):
        [c async for c in store.stream("k")]
    await store.close()


async def test_silent_server_times_out_bounded() -> None:
    # Accepts and reads, never answers: each attempt ends at the read timeout.
    async with _Scripted(lambda n: None) as server:
        client = _client(server.endpoint, "bucket", read_timeout=0.3, max_attempts=2)
        began = time.monotonic()
        with pytest.raises(S3Unreachable):
            await client.get("k")
        assert 0.5 < time.monotonic() - began < 3
        assert server.requests == 2
        await client.close()


async def test_503_is_retried_then_succeeds() -> None:
    slow_down = _answer(503, b"<Error><Code>SlowDown</Code></Error>")
    async with _Scripted(lambda n: slow_down if n < 3 else _answer(200, b"")) as server:
        client = _client(server.endpoint, "bucket", max_attempts=3)
        await client.put("k", b"payload")
        assert server.requests == 3
        await client.close()
    async with _Scripted(lambda n: slow_down) as server:
        client = _client(server.endpoint, "bucket", max_attempts=3)
        with pytest.raises(S3Error) as exc:
            await client.put("k", b"payload")
        assert (exc.value.status, exc.value.code, server.requests) == (503, "SlowDown", 3)
        await client.close()


async def test_interim_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + _answer(200, b"hello")
    async with _Scripted(lambda n: answer) as server:
        client = _client(server.endpoint, "bucket")
        assert await client.get("k") == b"hello"
        assert await client.get("k") == b"hello"  # and the connection is still in step
        assert server.requests == 2
        await client.close()


@pytest.mark.usefixtures("aws_env")
async def test_chunked_error_body_is_read() -> None:
    body = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    async with _Scripted(lambda n: answer) as server:
        client = _client(server.endpoint, "bucket")
        with pytest.raises(S3Error, match=r"NoSuchKey \(HTTP 404\): gone"):
            await client.get("k")
        await client.close()
        store = LeanS3BlobStore("bucket", endpoint_url=server.endpoint)
        with pytest.raises(BlobNotFound):
            await store.get("k")
        await store.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 100000000\r\n\r\n<Error>",  # huge error body
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 100_000 + b"\r\n\r\n",  # endless head
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # cut short, then closed
    ],
)
async def test_hostile_answers_are_unreachable_not_hangs(answer: bytes) -> None:
    async with _Scripted(lambda n: answer, close_after=True) as server:
        client = _client(server.endpoint, "bucket", read_timeout=1.0, max_attempts=2)
        began = time.monotonic()
        with pytest.raises(S3Unreachable):
            await client.get("k")
        assert time.monotonic() - began < 5
        await client.close()


def test_virtual_host_style_names_the_bucket_in_the_host() -> None:
    client = _client("https://s3.example.net", "mail-bucket", path_style=False)
    head = client._request_head("GET", "a b", b"", "UNSIGNED-PAYLOAD", {}).decode()
    assert head.startswith("GET /a%20b HTTP/1.1\r\n") and "\r\nhost: mail-bucket.s3.example.net\r\n" in head
    # A bucket name that is not DNS-safe, or an IP endpoint, stays path-style.
    for endpoint, bucket in (("https://s3.example.net", "Mail_Bucket"), ("http://127.0.0.1:9000", "mail-bucket")):
        head = _client(endpoint, bucket, path_style=False)._request_head("GET", "k", b"", "x", {}).decode()
        assert head.startswith(f"GET /{bucket}/k HTTP/1.1\r\n")


# -- helpers: a counting TCP proxy and a scripted HTTP server


def _answer(status: int, body: bytes) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


class _Proxy:
    def __init__(self, upstream: int, to_server: Callable[[bytes], bytes] = lambda data: data) -> None:
        self.upstream = upstream
        self.to_server = to_server
        self.port = 0
        self.accepted = 0
        self.peak = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> _Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop_all()
        self._server.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)

    def drop_all(self) -> None:
        for writer in list(self._open):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._open |= {writer, up_writer}
        self.peak = max(self.peak, len(self._open) // 2)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, change: Callable[[bytes], bytes]) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(change(data))
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, self.to_server), pipe(up_reader, writer, lambda data: data))
        self._open -= {writer, up_writer}


class _Scripted:
    """Reads each request's head and body, answers script(n) for the n-th request (None = silence)."""

    def __init__(self, script: Callable[[int], bytes | None], close_after: bool = False) -> None:
        self.script = script
        self.close_after = close_after
        self.requests = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> _Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        sock: socket.socket = self._server.sockets[0]
        self.endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            lengths = [
                int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
            ]
            await reader.readexactly(sum(lengths))
            self.requests += 1
            answer = self.script(self.requests)
            if answer is None:
                await asyncio.sleep(30)  # silence, until the test ends
                return
            writer.write(answer)
            await writer.drain()
            if self.close_after:
                return
