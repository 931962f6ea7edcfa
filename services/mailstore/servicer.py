"""gRPC servicers: proto <-> core translation and error mapping, nothing else."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import grpc
from mailstack.message.mailbox_patterns import PatternTooLongError, compile_patterns
from mailstack.services.common.auth_throttle import Throttled
from mailstack.services.mailstore import integrity
from mailstack.services.mailstore.core import AuthFailed, InvalidRequest, MailstoreCore, TooBig
from mailstack.storage import errors
from mailstack.storage.metadata.base import (
    AccountRecord,
    MailboxCounts,
    MailboxRecord,
    MessageRecord,
    StoreMode,
    UidRanges,
)
from mailstack.storage.quota.base import QuotaUsage
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

log = logging.getLogger("mailstack.mailstore.grpc")

ERROR_KEY = "mailstack-error-bin"
METADATA_BATCH = 500
# Messages listed in an AuthenticateResponse at most (~10-20 bytes each with UID and size: ~1-2 MB)
LISTING_MAX = 100_000
LISTING_MAX_BYTES = 4 * 1024 * 1024  # the callers' channels take 8 MiB messages
MAX_UID_RANGES = 10_000
MAX_SECTIONS = 100  # body sections per FetchBodies call
BODIES_BATCH = 1024 * 1024  # data packed into one FetchBodiesResponse

SPECIAL_USE_TO_PB = {
    "": pb.SPECIAL_USE_NONE, "\\Sent": pb.SPECIAL_USE_SENT, "\\Drafts": pb.SPECIAL_USE_DRAFTS,
    "\\Trash": pb.SPECIAL_USE_TRASH, "\\Junk": pb.SPECIAL_USE_JUNK, "\\Archive": pb.SPECIAL_USE_ARCHIVE,
    "\\All": pb.SPECIAL_USE_ALL, "\\Flagged": pb.SPECIAL_USE_FLAGGED,
}  # fmt: skip
PB_TO_SPECIAL_USE = {v: k for k, v in SPECIAL_USE_TO_PB.items()}
STORE_MODES: dict[int, StoreMode] = {pb.STORE_REPLACE: "replace", pb.STORE_ADD: "add", pb.STORE_REMOVE: "remove"}
CHANGE_KINDS = {"new": pb.CHANGE_NEW, "flags": pb.CHANGE_FLAGS, "expunge": pb.CHANGE_EXPUNGE,
                "mailbox": pb.CHANGE_MAILBOX, "resync": pb.CHANGE_KIND_UNSPECIFIED}  # fmt: skip

# storage/core exception -> (gRPC status, machine-readable reason)
ERROR_MAP: list[tuple[type[BaseException], grpc.StatusCode, pb.ErrorReason.ValueType]] = [
    (AuthFailed, grpc.StatusCode.UNAUTHENTICATED, pb.AUTH_FAILED),
    (Throttled, grpc.StatusCode.RESOURCE_EXHAUSTED, pb.AUTH_THROTTLED),
    (TooBig, grpc.StatusCode.RESOURCE_EXHAUSTED, pb.TOO_BIG),
    (errors.OverQuota, grpc.StatusCode.RESOURCE_EXHAUSTED, pb.OVER_QUOTA),
    (errors.AccountNotFound, grpc.StatusCode.NOT_FOUND, pb.ACCOUNT_NOT_FOUND),
    (errors.MailboxNotFound, grpc.StatusCode.NOT_FOUND, pb.MAILBOX_NOT_FOUND),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, pb.MESSAGE_NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, pb.ALREADY_EXISTS),
    (errors.InvalidName, grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_NAME),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST),
    (errors.HasChildren, grpc.StatusCode.FAILED_PRECONDITION, pb.HAS_CHILDREN),
    (errors.NotAllowed, grpc.StatusCode.FAILED_PRECONDITION, pb.NOT_ALLOWED),
    (errors.StorageUnavailable, grpc.StatusCode.UNAVAILABLE, pb.STORAGE_UNAVAILABLE),
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


async def abort_with(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: pb.ErrorReason.ValueType, message: str
) -> None:
    detail = pb.ErrorDetail(reason=reason, message=message)
    context.set_trailing_metadata(((ERROR_KEY, detail.SerializeToString()),))
    await context.abort(code, message)


async def _map_error(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    for kind, code, reason in ERROR_MAP:
        if isinstance(exc, kind):
            await abort_with(context, code, reason, str(exc) or kind.__name__)
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
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
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
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in method(self, request, context):
                yield item
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            await _map_error(context, exc)

    return wrapper  # type: ignore[return-value]


def uid_ranges(uid_set: pb.UidSet) -> UidRanges:
    if len(uid_set.ranges) > MAX_UID_RANGES:
        raise InvalidRequest("too many UID ranges")
    out = []
    for r in uid_set.ranges:
        first, last = r.first, r.last
        if first == 0:
            raise InvalidRequest("UID 0 does not exist")
        if last != 0 and last < first:
            first, last = last, first
        out.append((first, last))
    return out


def to_datetime(value: pb.DateTime) -> datetime:
    zone = timezone(timedelta(minutes=value.utc_offset_minutes))
    try:
        return datetime.fromtimestamp(value.unix_seconds, zone)
    except (OverflowError, OSError, ValueError):
        raise InvalidRequest("internal date out of range") from None


def account_pb(record: AccountRecord, usage: QuotaUsage, aliases: list[str] | None = None) -> pb.Account:
    return pb.Account(
        name=record.name,
        quota_bytes=record.quota_bytes,
        quota_messages=record.quota_messages,
        used_bytes=usage.bytes,
        used_messages=usage.messages,
        aliases=aliases or [],
    )


def status_pb(mailbox: MailboxRecord, counts: MailboxCounts) -> pb.MailboxStatus:
    return pb.MailboxStatus(
        name=mailbox.name,
        messages=counts.messages,
        unseen=counts.unseen,
        uidnext=mailbox.uidnext,
        uidvalidity=mailbox.uidvalidity,
        highestmodseq=mailbox.highestmodseq,
        size=counts.size,
        deleted=counts.deleted,
        recent=counts.recent,
        first_unseen_uid=counts.first_unseen_uid,
    )


def metadata_pb(record: MessageRecord, fields: pb.MetadataFields) -> pb.MessageMetadata:
    out = pb.MessageMetadata(uid=record.uid, modseq=record.modseq)
    if fields.flags:
        out.flags.extend(record.flags)
    if fields.internal_date:
        out.internal_date.unix_seconds = record.internal_date
        out.internal_date.utc_offset_minutes = record.tz_offset
    if fields.size:
        out.size = record.size
    if fields.envelope:
        out.envelope.ParseFromString(record.envelope)
    if fields.body_structure:
        out.body_structure.ParseFromString(record.structure)
    return out


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


class MailstoreServicer(pbg.MailstoreServicer):
    def __init__(self, core: MailstoreCore) -> None:
        self.core = core

    @rpc
    async def Authenticate(self, request: pb.AuthenticateRequest, context: Any) -> pb.AuthenticateResponse:
        try:
            account = await self.core.authenticate(
                request.username, request.password, request.authzid, request.remote_ip
            )
        except Throttled as exc:
            # the frontend logs the refusal with its session; this line covers every caller
            log.warning(
                "login throttled",
                extra={"protocol": request.protocol, "remote_ip": request.remote_ip, "reason": exc.scope},
            )
            raise
        reply = pb.AuthenticateResponse(account=account)
        lease_name = ""
        if request.HasField("lease"):
            lease = request.lease
            granted, holder = await self.core.acquire_lease(lease.name + account, lease.holder, lease.ttl_seconds)
            reply.lease.CopyFrom(pb.LeaseResponse(granted=granted, holder=holder))
            if not granted:
                return reply
            lease_name = lease.name + account
        if request.HasField("listing"):
            replies = self._metadata_replies(account, request.listing, LISTING_MAX)
            try:
                async with contextlib.aclosing(replies):
                    first = await anext(replies)
                    longer = await anext(replies, None) is not None
            except BaseException:
                if lease_name:  # the caller gets an error, not the lock: it must not stay held
                    with contextlib.suppress(Exception):
                        await self.core.release_lease(lease_name, request.lease.holder)
                raise
            # else the caller asks FetchMetadata (rare: a huge maildrop, or heavy fields)
            if not longer and first.ByteSize() <= LISTING_MAX_BYTES:
                reply.listing.CopyFrom(first)
        return reply

    @rpc
    async def ResolveRecipient(self, request: pb.ResolveRecipientRequest, context: Any) -> pb.ResolveRecipientResponse:
        status, account = await self.core.resolve_recipient(request.address, request.size)
        return pb.ResolveRecipientResponse(status=status, account=account)

    @rpc
    async def CheckSender(self, request: pb.CheckSenderRequest, context: Any) -> pb.CheckSenderResponse:
        return pb.CheckSenderResponse(allowed=await self.core.check_sender(request.account, request.address))

    # ---- mailboxes

    @rpc
    async def ListMailboxes(self, request: pb.ListMailboxesRequest, context: Any) -> pb.ListMailboxesResponse:
        # RFC 3501 §6.3.8 wildcards, matched in linear time (message.mailbox_patterns)
        try:
            pattern = compile_patterns((request.pattern or "*",))
        except PatternTooLongError as e:
            raise InvalidRequest(str(e)) from None
        mailboxes, subscriptions = await self.core.list_mailboxes(request.account)
        subscribed = set(subscriptions)
        existing = {m.name: m for m in mailboxes}
        # Names that exist only as parents of mailboxes are listed as \NonExistent (\Noselect).
        all_names = set(existing) | (subscribed if request.subscribed_only else set())
        for name in list(all_names):
            parts = name.split("/")
            all_names.update("/".join(parts[:i]) for i in range(1, len(parts)))
        # \HasChildren: the superiors of existing mailboxes (a set, not a scan per name)
        parents: set[str] = set()
        for name in existing:
            parts = name.split("/")
            parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        out = pb.ListMailboxesResponse()
        for name in sorted(all_names, key=lambda n: (n != "INBOX", n)):
            if not pattern.matches(name):
                continue
            if request.subscribed_only and name not in subscribed:
                continue
            record = existing.get(name)
            item = pb.Mailbox(
                name=name,
                subscribed=name in subscribed,
                has_children=name in parents,
                nonexistent=record is None,
            )
            if record is not None:
                item.uidvalidity = record.uidvalidity
                item.special_use = SPECIAL_USE_TO_PB.get(record.special_use, pb.SPECIAL_USE_NONE)
                if request.with_status:
                    item.status.CopyFrom(status_pb(record, await self.core.metadata.mailbox_counts(record.id)))
            out.mailboxes.append(item)
        return out

    @rpc
    async def CreateMailbox(self, request: pb.CreateMailboxRequest, context: Any) -> pb.Mailbox:
        special = PB_TO_SPECIAL_USE.get(request.special_use, "")
        record = await self.core.create_mailbox(request.account, request.name, special)
        return pb.Mailbox(name=record.name, uidvalidity=record.uidvalidity, special_use=request.special_use)

    @rpc
    async def DeleteMailbox(self, request: pb.DeleteMailboxRequest, context: Any) -> pb.Empty:
        await self.core.delete_mailbox(request.account, request.name)
        return pb.Empty()

    @rpc
    async def RenameMailbox(self, request: pb.RenameMailboxRequest, context: Any) -> pb.Empty:
        await self.core.rename_mailbox(request.account, request.name, request.new_name)
        return pb.Empty()

    @rpc
    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> pb.Empty:
        await self.core.subscribe(request.account, request.name, request.subscribed)
        return pb.Empty()

    @rpc
    async def GetMailboxStatus(self, request: pb.MailboxStatusRequest, context: Any) -> pb.MailboxStatus:
        mailbox, counts = await self.core.status(request.account, request.name)
        return status_pb(mailbox, counts)

    @rpc
    async def ClaimRecent(self, request: pb.ClaimRecentRequest, context: Any) -> pb.ClaimRecentResponse:
        first, uidnext = await self.core.claim_recent(request.account, request.mailbox)
        return pb.ClaimRecentResponse(first_uid=first, uidnext=uidnext)

    # ---- messages

    @rpc
    async def Append(self, request_iterator: AsyncIterator[pb.AppendRequest], context: Any) -> pb.AppendResponse:
        limit = self.core.settings.max_message_size
        header, data = await read_stream(request_iterator, "header", limit, lambda h: h.size)
        when = to_datetime(header.internal_date) if header.HasField("internal_date") else None
        result = await self.core.append(header.account, header.mailbox, data, list(header.flags), when)
        return pb.AppendResponse(uid=result.uid, uidvalidity=result.uidvalidity, modseq=result.modseq)

    @rpc
    async def Deliver(self, request_iterator: AsyncIterator[pb.DeliverRequest], context: Any) -> pb.DeliverResponse:
        limit = self.core.settings.max_message_size
        envelope, data = await read_stream(request_iterator, "envelope", limit, lambda e: e.size)
        if not envelope.recipients or len(envelope.recipients) > 1000:
            raise InvalidRequest("1..1000 recipients required")
        outcomes, message_id = await self.core.deliver(
            envelope.sender, list(envelope.recipients), data, envelope.mailbox or "INBOX"
        )
        return pb.DeliverResponse(
            results=[
                pb.RecipientResult(
                    recipient=o.recipient,
                    status=o.status,
                    account=o.account,
                    uid=o.uid,
                    uidvalidity=o.uidvalidity,
                    detail=o.detail,
                )
                for o in outcomes
            ],
            message_id=message_id,
        )

    @stream_rpc
    async def FetchMetadata(
        self, request: pb.FetchMetadataRequest, context: Any
    ) -> AsyncIterator[pb.FetchMetadataResponse]:
        async for reply in self._metadata_replies(request.account, request, METADATA_BATCH):
            yield reply

    async def _metadata_replies(
        self, account: str, request: pb.FetchMetadataRequest, per_reply: int
    ) -> AsyncGenerator[pb.FetchMetadataResponse, None]:
        """FetchMetadata's responses, `per_reply` messages in each, each built when it is sent."""
        uids = uid_ranges(request.uids) if request.uids.ranges else None
        # The status before the listing: its HIGHESTMODSEQ is then never newer than what is listed.
        status = status_pb(*await self.core.status(account, request.mailbox)) if request.with_status else None
        mailbox, records = await self.core.fetch_metadata(account, request.mailbox, uids, request.changed_since)
        for i in range(0, max(len(records), 1), per_reply):
            batch = records[i : i + per_reply]
            messages = [metadata_pb(r, request.fields) for r in batch]
            reply = pb.FetchMetadataResponse(messages=messages, uidvalidity=mailbox.uidvalidity)
            if status is not None and i == 0:
                reply.status.CopyFrom(status)
            yield reply

    @rpc
    async def FetchBody(self, request: pb.FetchBodyRequest, context: Any) -> None:  # type: ignore[override,unused-ignore]
        # Server streaming by context.write rather than an async generator (grpc.aio takes both; the
        # stub types only the generator): the hot path of POP3 RETR and IMAP BODY[], and ~10% less
        # server CPU per call in grpc.aio.
        partial = (request.offset, request.length) if request.has_partial else None
        body = await self.core.fetch_body(request.account, request.mailbox, request.uid, request.section, partial)
        first = True
        async with closed_after(body.chunks) as chunks:
            async for chunk in chunks:
                await context.write(pb.FetchBodyResponse(total_size=body.total_size if first else 0, data=chunk))
                first = False
        if first:
            await context.write(pb.FetchBodyResponse(total_size=body.total_size))

    @rpc
    async def FetchBodies(self, request: pb.FetchBodiesRequest, context: Any) -> None:  # type: ignore[override,unused-ignore]
        # context.write, as in FetchBody; chunks are built in place (chunks.add): each copy of a
        # body into a protobuf message costs, and these are the bulk of POP3 RETR's bytes.
        if len(request.sections) > MAX_SECTIONS:
            raise InvalidRequest(f"at most {MAX_SECTIONS} sections")
        uids = uid_ranges(request.uids)
        if not uids:
            return
        wanted = [(s.section, (s.offset, s.length) if s.has_partial else None) for s in request.sections]
        out = pb.FetchBodiesResponse()
        packed = 0
        fields = request.metadata if request.HasField("metadata") else None

        async def pack(
            uid: int,
            index: int,
            total: int,
            data: bytes,
            last: bool,
            crlf: bool,
            meta: pb.MessageMetadata | None,
            missing: bool = False,
        ) -> None:
            nonlocal out, packed
            if packed and packed + len(data) + (meta.ByteSize() if meta is not None else 0) > BODIES_BATCH:
                await context.write(out)
                out, packed = pb.FetchBodiesResponse(), 0
            chunk = out.chunks.add(
                uid=uid, section_index=index, total_size=total, data=data, last=last, crlf=crlf, missing=missing
            )
            packed += len(data)
            if meta is not None:  # counted too: envelopes of many small messages must not burst a response
                chunk.metadata.CopyFrom(meta)
                packed += meta.ByteSize()

        items = self.core.fetch_bodies(request.account, request.mailbox, uids, wanted, request.max_bytes)
        async with closed_after(items):
            async for record, index, body in items:
                uid = record.uid
                meta = metadata_pb(record, fields) if fields is not None and index == 0 else None
                if body.missing:
                    await pack(uid, index, 0, b"", True, False, meta, missing=True)
                    continue
                # Each chunk is held back until the next one shows whether it is the item's last.
                total, held, sent = body.total_size, b"", False
                try:
                    async with closed_after(body.chunks) as chunks:
                        async for data in chunks:
                            if held:
                                await pack(uid, index, total, held, False, body.crlf, meta)
                                total, meta, sent = 0, None, True  # total_size and metadata: first chunk only
                            held = data
                except errors.BlobNotFound:
                    if sent or held:
                        raise
                    # A big body read in ranges: gone before its first byte, it is missing like a small one.
                    await pack(uid, index, 0, b"", True, False, meta, missing=True)
                    continue
                await pack(uid, index, total, held, True, body.crlf, meta)
        if out.chunks:
            await context.write(out)

    @rpc
    async def StoreFlags(self, request: pb.StoreFlagsRequest, context: Any) -> pb.StoreFlagsResponse:
        updated, failed = await self.core.store_flags(
            request.account,
            request.mailbox,
            uid_ranges(request.uids),
            STORE_MODES[request.mode],
            list(request.flags),
            request.unchanged_since if request.has_unchanged_since else None,
        )
        return pb.StoreFlagsResponse(
            updated=[pb.MessageMetadata(uid=u.uid, modseq=u.modseq, flags=u.flags) for u in updated], failed=failed
        )

    async def _copy(self, request: pb.CopyRequest, move: bool) -> pb.CopyResponse:
        result = await self.core.copy(
            request.account, request.mailbox, uid_ranges(request.uids), request.destination, move
        )
        return pb.CopyResponse(
            uidvalidity=result.uidvalidity,
            mapping=[pb.UidPair(source=s, destination=d) for s, d in result.mapping],
        )

    @rpc
    async def Copy(self, request: pb.CopyRequest, context: Any) -> pb.CopyResponse:
        return await self._copy(request, move=False)

    @rpc
    async def Move(self, request: pb.CopyRequest, context: Any) -> pb.CopyResponse:
        return await self._copy(request, move=True)

    @rpc
    async def Expunge(self, request: pb.ExpungeRequest, context: Any) -> pb.ExpungeResponse:
        uids = None if request.all_deleted or not request.uids.ranges else uid_ranges(request.uids)
        result = await self.core.expunge(request.account, request.mailbox, uids)
        return pb.ExpungeResponse(expunged=result.expunged, highestmodseq=result.modseq)

    @rpc
    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        key = request.key if request.HasField("key") else pb.SearchKey(all=True)
        uids, top = await self.core.search(request.account, request.mailbox, key)
        return pb.SearchResponse(uids=uids, highestmodseq=top)

    @rpc
    async def GetQuota(self, request: pb.GetQuotaRequest, context: Any) -> pb.Quota:
        record = await self.core.account(request.account)
        usage = await self.core.account_usage(record)
        return pb.Quota(
            used_bytes=usage.bytes,
            limit_bytes=record.quota_bytes,
            used_messages=usage.messages,
            limit_messages=record.quota_messages,
        )

    @rpc
    async def GetChanges(self, request: pb.GetChangesRequest, context: Any) -> pb.GetChangesResponse:
        mailbox, changes, pruned = await self.core.changes_since(request.account, request.mailbox, request.since_modseq)
        return pb.GetChangesResponse(
            changes=[pb.Change(uid=c.uid, modseq=c.modseq, kind=CHANGE_KINDS[c.kind], flags=c.flags) for c in changes],
            highestmodseq=mailbox.highestmodseq,
            uidvalidity=mailbox.uidvalidity,
            pruned_modseq=pruned,
        )

    @stream_rpc
    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.ChangeEvent]:
        subscription = await self.core.watch(request.account)
        try:
            async for event in subscription:
                yield pb.ChangeEvent(
                    account=event.account,
                    mailbox=event.mailbox,
                    kind=CHANGE_KINDS[event.kind],
                    uids=event.uids,
                    modseq=event.modseq,
                    uidvalidity=event.uidvalidity,
                )
        finally:
            await subscription.close()

    @rpc
    async def AcquireLease(self, request: pb.LeaseRequest, context: Any) -> pb.LeaseResponse:
        granted, holder = await self.core.acquire_lease(request.name, request.holder, request.ttl_seconds)
        return pb.LeaseResponse(granted=granted, holder=holder)

    @rpc
    async def ReleaseLease(self, request: pb.LeaseRequest, context: Any) -> pb.Empty:
        await self.core.release_lease(request.name, request.holder)
        return pb.Empty()


class AdminServicer(pbg.AdminServicer):
    def __init__(self, core: MailstoreCore) -> None:
        self.core = core

    async def _account_pb(self, record: AccountRecord) -> pb.Account:
        aliases = [a for a, _ in await self.core.metadata.list_aliases(record.name)]
        return account_pb(record, await self.core.account_usage(record), aliases)

    @rpc
    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Any) -> pb.Account:
        record = await self.core.create_account(
            request.name, request.password, request.quota_bytes, request.quota_messages
        )
        return await self._account_pb(record)

    @rpc
    async def SetPassword(self, request: pb.SetPasswordRequest, context: Any) -> pb.Empty:
        await self.core.set_password(request.name, request.password)
        return pb.Empty()

    @rpc
    async def DeleteAccount(self, request: pb.DeleteAccountRequest, context: Any) -> pb.Empty:
        await self.core.delete_account(request.name)
        return pb.Empty()

    @rpc
    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        return await self._account_pb(await self.core.account(request.name))

    @rpc
    async def ListAccounts(self, request: pb.ListAccountsRequest, context: Any) -> pb.ListAccountsResponse:
        return pb.ListAccountsResponse(accounts=[await self._account_pb(r) for r in await self.core.list_accounts()])

    @rpc
    async def SetQuota(self, request: pb.SetQuotaRequest, context: Any) -> pb.Account:
        record = await self.core.set_quota(request.name, request.quota_bytes, request.quota_messages)
        return await self._account_pb(record)

    @rpc
    async def AddDomain(self, request: pb.AddDomainRequest, context: Any) -> pb.Domain:
        return pb.Domain(name=await self.core.add_domain(request.name))

    @rpc
    async def DeleteDomain(self, request: pb.DeleteDomainRequest, context: Any) -> pb.Empty:
        await self.core.metadata.delete_domain(request.name.strip().lower())
        return pb.Empty()

    @rpc
    async def ListDomains(self, request: pb.ListDomainsRequest, context: Any) -> pb.ListDomainsResponse:
        return pb.ListDomainsResponse(domains=[pb.Domain(name=d) for d in await self.core.metadata.list_domains()])

    @rpc
    async def AddAlias(self, request: pb.AddAliasRequest, context: Any) -> pb.Alias:
        address, account = await self.core.add_alias(request.address, request.account)
        return pb.Alias(address=address, account=account)

    @rpc
    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: Any) -> pb.Empty:
        await self.core.metadata.delete_alias(request.address.strip().lower())
        return pb.Empty()

    @rpc
    async def ListAliases(self, request: pb.ListAliasesRequest, context: Any) -> pb.ListAliasesResponse:
        account = request.account.strip().lower() or None
        pairs = await self.core.metadata.list_aliases(account)
        return pb.ListAliasesResponse(aliases=[pb.Alias(address=a, account=b) for a, b in pairs])

    @rpc
    async def RecomputeQuota(self, request: pb.RecomputeQuotaRequest, context: Any) -> pb.RecomputeQuotaResponse:
        records = await self.core.recompute_quota(request.account)
        return pb.RecomputeQuotaResponse(accounts=[await self._account_pb(r) for r in records])

    @rpc
    async def CheckIntegrity(self, request: pb.CheckIntegrityRequest, context: Any) -> pb.CheckIntegrityResponse:
        report = await integrity.check_integrity(
            self.core, request.account, request.repair, request.min_age_seconds or None
        )
        return pb.CheckIntegrityResponse(
            broken=[
                pb.BrokenMessage(
                    account=r.account,
                    mailbox=r.mailbox,
                    uid=r.uid,
                    uidvalidity=r.uidvalidity,
                    blob_key=r.blob_key,
                    size=r.size,
                )
                for r in report.broken
            ],
            orphans=report.orphans,
            messages_checked=report.messages_checked,
            blobs_checked=report.blobs_checked,
            repaired=report.repaired,
        )
