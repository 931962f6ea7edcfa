"""gRPC plumbing of the mailstore's servicers: core errors -> status codes (with the ErrorDetail
trailer), client-streamed uploads read within a limit, streams closed when the caller goes."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from mailstack.services.common.grpc_client import ERROR_DETAIL_KEY
from mailstack.services.mailstore.core.errors import InvalidRequest, TooBig
from mailstack.services.mailstore.translate import error_detail, error_status
from mailstack.v1 import mailstore_pb2 as pb

log = logging.getLogger("mailstack.mailstore.grpc")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, reason: pb.ErrorReason.ValueType, message: str
) -> None:
    context.set_trailing_metadata(((ERROR_DETAIL_KEY, error_detail(reason, message)),))
    await context.abort(code, message)


async def _map_error(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    status = error_status(exc)
    if status is not None:
        await abort_with(context, *status)
    log.exception("internal error", exc_info=exc)
    await abort_with(context, grpc.StatusCode.INTERNAL, pb.ERROR_REASON_UNSPECIFIED, "internal error")


@contextlib.asynccontextmanager
async def closed_after(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator when the loop over it ends early: when the caller cancels a
    stream (a POP3 session gone, read-ahead dropped), its open blob file and read tasks are let
    go now, not whenever the garbage collector finds them."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


# What grpc.aio raises from context.write when the stream is gone; its only public name is in
# the Cython module (there is no grpc.aio equivalent to catch).
_CYGRPC = importlib.import_module("grpc._cython.cygrpc")
_WRITE_FAILED: type[Exception] = getattr(_CYGRPC, "ExecuteBatchError", grpc.RpcError)


def rpc(method: F) -> F:
    """Map core and storage exceptions of a unary or client-streaming RPC to gRPC status codes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except _WRITE_FAILED:
            # context.write on a stream the caller cancelled (its cancel is not seen yet): nobody
            # is left to answer, and nothing went wrong here.
            log.debug("%s: the caller went away mid-stream", method.__name__)
            return None
        except Exception as exc:
            await _map_error(context, exc)

    return wrapper  # type: ignore[return-value]


def stream_rpc(method: F) -> F:
    """The same for server-streaming RPCs (async generators)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in method(self, request, context):
                yield item
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            await _map_error(context, exc)

    return wrapper  # type: ignore[return-value]


async def _drain(requests: AsyncIterator[Any], budget: int) -> None:
    """Read and discard the rest of an oversized upload (at most `budget` more bytes), so
    the client finishes sending and gets the TOO_BIG status, not a broken stream."""
    drained = 0
    async for request in requests:
        drained += request.ByteSize()
        if drained > budget:
            return


async def read_stream(
    requests: AsyncIterator[Any], header_field: str, limit: int, announced: Callable[[Any], int]
) -> tuple[Any, bytes]:
    """Collect a client-streamed message: header first, then chunks, never past the limit."""
    header = None
    parts: list[bytes] = []
    total = 0
    async for request in requests:
        which = request.WhichOneof("part")
        if which == header_field:
            if header is not None:
                raise InvalidRequest(f"{header_field} sent twice")
            header = getattr(request, header_field)
            if announced(header) > limit:
                # Read what the client said it would send (bounded), so it gets this status.
                await _drain(requests, min(announced(header) + (1 << 20), 2 * limit))
                raise TooBig(f"announced size {announced(header)} is over the limit of {limit}")
        elif which == "chunk":
            if header is None:
                raise InvalidRequest(f"{header_field} must come first")
            total += len(request.chunk)
            if total > limit:
                parts.clear()  # free the memory at once
                await _drain(requests, limit)
                raise TooBig(f"message is over the limit of {limit} bytes")
            parts.append(request.chunk)
        else:
            raise InvalidRequest("empty stream message")
    if header is None:
        raise InvalidRequest(f"no {header_field}")
    data = b"".join(parts)
    if announced(header) and announced(header) != len(data):
        raise InvalidRequest(f"announced {announced(header)} bytes but received {len(data)}")
    return header, data
