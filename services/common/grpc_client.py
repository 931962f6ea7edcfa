"""Channels to the mailstore: one place for options, address forms and interceptors.

Addresses are gRPC targets: "host:port" (plaintext; the mailstore is reached on
loopback or inside the cluster) or "unix:/path/to/socket".

Deliberately no automatic retries and no wait_for_ready: Append and Deliver are
not idempotent, and a caller that cannot reach the mailstore must hear so at once
(SMTP answers 451, IMAP NO [UNAVAILABLE], the CLI exits 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any, cast

import grpc
import grpc.aio
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

MiB = 1024 * 1024
MAX_MESSAGE_SIZE = 8 * MiB  # bodies travel in <= 1 MiB chunks; metadata batches stay well below this
ERROR_DETAIL_KEY = "mailstack-error-bin"  # trailing metadata: a serialized pb.ErrorDetail

# Keepalive pings notice a dead mailstore (or a silently dropped connection) on idle
# channels and on long-lived streams such as Watch, within about 30 s.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
    # Calls fail at once while the channel is down, so it must try to reconnect often: gRPC's default
    # backoff (x1.6 per attempt, up to 120 s) left the frontends failing for seconds to minutes after
    # a restarted mailstore was back (tests/e2e/test_topology.py).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

# What the mailstore's server must allow so that the clients' pings above are not
# answered with GOAWAY "too_many_pings" (the server default is one ping per 5 minutes).
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def check_address(address: str) -> str:
    if not address or address.strip() != address:
        raise ValueError(f"invalid mailstore address {address!r}: use HOST:PORT or unix:/PATH")
    if not address.startswith("unix:") and ":" not in address:
        raise ValueError(f"invalid mailstore address {address!r}: use HOST:PORT or unix:/PATH")
    return address


def client_interceptors() -> list[Any]:
    """The one place where client interceptors are added (asyncio channels).

    Trace context goes into each call's metadata only while spans are recorded (an OTLP exporter
    or a test's exporter is set up before the channel opens): an intercepted grpc.aio call costs an
    extra task per call, not worth paying when no trace is collected."""
    from mailstack.services.common import telemetry  # here: the CLI imports this module and needs no SDK
    from mailstack.services.common.grpc_tracing import client_trace_interceptors

    return client_trace_interceptors() if telemetry.tracing_enabled() else []


def open_channel(address: str) -> grpc.aio.Channel:
    """An asyncio channel for the services; close it with `await channel.close()`."""
    return grpc.aio.insecure_channel(
        check_address(address), options=CHANNEL_OPTIONS, interceptors=client_interceptors() or None
    )


def open_sync_channel(address: str) -> grpc.Channel:
    """A blocking channel for the CLI (no interceptors: the CLI records no spans); close it with `channel.close()`."""
    return grpc.insecure_channel(check_address(address), options=CHANNEL_OPTIONS)


def error_detail(err: grpc.RpcError) -> pb.ErrorDetail | None:
    """The mailstore's ErrorDetail from an error's trailing metadata, if it sent one."""
    trailing = getattr(err, "trailing_metadata", None)
    if trailing is None:
        return None
    try:
        metadata = trailing()
    except Exception:  # a client-side error (e.g. never connected) may carry no call
        return None
    for key, value in metadata or ():
        if key == ERROR_DETAIL_KEY and isinstance(value, bytes):
            detail = pb.ErrorDetail()
            try:
                detail.ParseFromString(value)
            except Exception:  # a corrupt detail must not hide the status code
                return None
            return detail
    return None


def error_message(err: grpc.RpcError) -> str:
    """A one-line message for an error: the ErrorDetail's, else the status details."""
    detail = error_detail(err)
    if detail is not None and detail.reason:
        # "account not found: bob@example.test" -- the reason, unless the message already says it
        reason = pb.ErrorReason.Name(detail.reason).replace("_", " ").lower()
        if not detail.message:
            return reason
        return detail.message if reason in detail.message.lower() else f"{reason}: {detail.message}"
    if detail is not None and detail.message:
        return detail.message
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else None
    if details:
        return str(details)
    return code.name.lower() if code is not None else str(err)


def mailstore_stub(channel: grpc.aio.Channel) -> pbg.MailstoreAsyncStub:
    """The Mailstore stub typed for grpc.aio (mypy-protobuf's overload picks the sync one)."""
    return cast("pbg.MailstoreAsyncStub", pbg.MailstoreStub(channel))


async def stream_bodies(
    stub: pbg.MailstoreAsyncStub,
    request: pb.FetchBodiesRequest,
    deadline_seconds: float,
    metadata: dict[int, pb.MessageMetadata] | None = None,
    missing: set[int] | None = None,
) -> AsyncGenerator[tuple[tuple[int, int], bytes, bool], None]:
    """A FetchBodies call item by item, as each one's last chunk arrives: ((uid, section index),
    bytes, only CRLF line ends). Messages gone are never yielded, nor messages whose body is
    missing from the store (BodyChunk.missing): their UIDs go to `missing`. Leaving the loop early
    cancels the call. The metadata sent with the chunks (request.metadata) is put in `metadata` by UID."""
    call = stub.FetchBodies(request, timeout=deadline_seconds)
    parts: dict[tuple[int, int], list[bytes]] = {}
    try:
        async for reply in call:
            for chunk in reply.chunks:
                if metadata is not None and chunk.HasField("metadata"):
                    metadata[chunk.uid] = chunk.metadata
                if chunk.missing:
                    if missing is not None:
                        missing.add(chunk.uid)
                    continue
                if chunk.last and chunk.total_size:  # the whole item in one chunk: the common case
                    yield (chunk.uid, chunk.section_index), chunk.data, chunk.crlf
                    continue
                key = (chunk.uid, chunk.section_index)
                parts.setdefault(key, []).append(chunk.data)
                if chunk.last:
                    yield key, b"".join(parts.pop(key)), chunk.crlf
    finally:
        call.cancel()


async def stream_whole_bodies(
    stub: pbg.MailstoreAsyncStub,
    account: str,
    mailbox: str,
    uids: pb.UidSet,
    deadline_seconds: float,
    max_bytes: int = 0,
) -> AsyncGenerator[tuple[int, bytes, bool], None]:
    """Whole messages in one FetchBodies call, each as it arrives: (uid, bytes, only CRLF line
    ends). With `max_bytes`, only the first messages whose sizes add up to at most that (the first
    always): read-ahead. Leaving the loop early cancels the call."""
    request = pb.FetchBodiesRequest(
        account=account,
        mailbox=mailbox,
        uids=uids,
        sections=[pb.BodySection(section=pb.Section(text=pb.SECTION_ALL))],
        max_bytes=max_bytes,
    )
    items = stream_bodies(stub, request, deadline_seconds)
    async with contextlib.aclosing(items):
        async for (uid, _index), data, crlf in items:
            yield uid, data, crlf


async def collect_bodies(
    stub: pbg.MailstoreAsyncStub,
    request: pb.FetchBodiesRequest,
    deadline_seconds: float,
    crlf: set[tuple[int, int]] | None = None,
    metadata: dict[int, pb.MessageMetadata] | None = None,
    missing: set[int] | None = None,
) -> dict[tuple[int, int], bytes]:
    """A FetchBodies call gathered: {(uid, section index): bytes}; messages gone are absent.
    The keys of items the mailstore marks as having only CRLF line ends are added to `crlf`, the
    metadata sent with the chunks to `metadata`, the UIDs of bodies missing from the store to `missing`."""
    out: dict[tuple[int, int], bytes] = {}
    items = stream_bodies(stub, request, deadline_seconds, metadata, missing)
    async with contextlib.aclosing(items):
        async for key, data, only_crlf in items:
            out[key] = data
            if crlf is not None and only_crlf:
                crlf.add(key)
    return out
