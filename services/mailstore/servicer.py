"""gRPC servicers of mailstore.proto: each call translates its request (translate.py), calls one
use case of the core, and translates the answer; errors map to status codes in rpc.py."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from mailstack.services.mailstore import translate
from mailstack.services.mailstore.core import MailstoreCore
from mailstack.services.mailstore.core.errors import BlobNotFound, InvalidRequest, Throttled
from mailstack.services.mailstore.core.results import BodySlice, RecipientVerdict
from mailstack.services.mailstore.forwarding import Forwarding
from mailstack.services.mailstore.rpc import closed_after, read_stream, rpc, stream_rpc
from mailstack.services.mailstore.translate import metadata_pb, status_pb, uid_ranges
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

log = logging.getLogger("mailstack.mailstore.grpc")

METADATA_BATCH = 500
SORT_DATA_BATCH = 2000  # SortData of ~0.2-1 KB each: a response stays far below the 8 MiB message limit
# Messages listed in an AuthenticateResponse at most (~10-20 bytes each with UID and size: ~1-2 MB)
LISTING_MAX = 100_000
LISTING_MAX_BYTES = 4 * 1024 * 1024  # the callers' channels take 8 MiB messages
MAX_SECTIONS = 100  # body sections per FetchBodies call
BODIES_BATCH = 1024 * 1024  # data packed into one FetchBodiesResponse


class _BodiesWriter:
    """FetchBodiesResponses of about BODIES_BATCH bytes each; chunks are built in place
    (chunks.add): each copy of a body into a protobuf message costs, and these are the bulk of
    POP3 RETR's bytes."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.context = context
        self.out = pb.FetchBodiesResponse()
        self.packed = 0

    async def add(
        self,
        uid: int,
        index: int,
        total: int,
        data: bytes,
        last: bool,
        crlf: bool,
        meta: pb.MessageMetadata | None,
        missing: bool = False,
    ) -> None:
        meta_size = meta.ByteSize() if meta is not None else 0  # once: it walks the whole message
        if self.packed and self.packed + len(data) + meta_size > BODIES_BATCH:
            await self.context.write(self.out)
            self.out, self.packed = pb.FetchBodiesResponse(), 0
        chunk = self.out.chunks.add(
            uid=uid, section_index=index, total_size=total, data=data, last=last, crlf=crlf, missing=missing
        )
        self.packed += len(data)
        if meta is not None:  # counted too: envelopes of many small messages must not burst a response
            chunk.metadata.CopyFrom(meta)
            self.packed += meta_size

    async def body(self, uid: int, index: int, body: BodySlice, meta: pb.MessageMetadata | None) -> None:
        """One section of one message; each chunk is held back until the next one shows whether
        it is the item's last. A missing body is one empty chunk marked missing (see integrity.py)."""
        if body.missing:
            await self.add(uid, index, 0, b"", True, False, meta, missing=True)
            return
        total, held, sent = body.total_size, b"", False
        try:
            async with closed_after(body.chunks) as chunks:
                async for data in chunks:
                    if held:
                        await self.add(uid, index, total, held, False, body.crlf, meta)
                        total, meta, sent = 0, None, True  # total_size and metadata: first chunk only
                    held = data
        except BlobNotFound:
            if sent or held:
                raise
            # A big body read in ranges: gone before its first byte, it is missing like a small one.
            await self.add(uid, index, 0, b"", True, False, meta, missing=True)
            return
        await self.add(uid, index, total, held, True, body.crlf, meta)

    async def flush(self) -> None:
        if self.out.chunks:
            await self.context.write(self.out)


class MailstoreServicer(pbg.MailstoreServicer):
    def __init__(self, core: MailstoreCore) -> None:
        self.core = core
        self.forwarding: Forwarding | None = None  # set by the server once the queue is open (issue 18)

    @rpc
    async def Authenticate(self, request: pb.AuthenticateRequest, context: Any) -> pb.AuthenticateResponse:
        try:
            account = await self.core.auth.authenticate(
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
            granted, holder = await self.core.changes.acquire_lease(
                lease.name + account, lease.holder, lease.ttl_seconds
            )
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
                        await self.core.changes.release_lease(lease_name, request.lease.holder)
                raise
            # else the caller asks FetchMetadata (rare: a huge maildrop, or heavy fields)
            if not longer and first.ByteSize() <= LISTING_MAX_BYTES:
                reply.listing.CopyFrom(first)
        return reply

    @rpc
    async def ResolveRecipient(self, request: pb.ResolveRecipientRequest, context: Any) -> pb.ResolveRecipientResponse:
        verdict, account = await self.core.accounts.resolve_recipient(request.address, request.size)
        forwarding = self.forwarding
        if verdict in (RecipientVerdict.UNKNOWN, RecipientVerdict.NOT_LOCAL) and forwarding is not None:
            if await forwarding.reverse(request.address):
                verdict = RecipientVerdict.LOCAL  # a bounce to an SRS address of ours: relayed back
        return pb.ResolveRecipientResponse(status=translate.VERDICTS[verdict], account=account)

    @rpc
    async def CheckSender(self, request: pb.CheckSenderRequest, context: Any) -> pb.CheckSenderResponse:
        return pb.CheckSenderResponse(allowed=await self.core.accounts.check_sender(request.account, request.address))

    # ---- mailboxes

    @rpc
    async def ListMailboxes(self, request: pb.ListMailboxesRequest, context: Any) -> pb.ListMailboxesResponse:
        listed = await self.core.mailboxes.listing(
            request.account, request.pattern, request.subscribed_only, request.with_status
        )
        return pb.ListMailboxesResponse(mailboxes=[translate.mailbox_pb(m) for m in listed])

    @rpc
    async def CreateMailbox(self, request: pb.CreateMailboxRequest, context: Any) -> pb.Mailbox:
        special = translate.PB_TO_SPECIAL_USE.get(request.special_use, "")
        record = await self.core.mailboxes.create(request.account, request.name, special)
        return pb.Mailbox(name=record.name, uidvalidity=record.uidvalidity, special_use=request.special_use)

    @rpc
    async def DeleteMailbox(self, request: pb.DeleteMailboxRequest, context: Any) -> pb.Empty:
        await self.core.mailboxes.delete(request.account, request.name)
        return pb.Empty()

    @rpc
    async def RenameMailbox(self, request: pb.RenameMailboxRequest, context: Any) -> pb.Empty:
        await self.core.mailboxes.rename(request.account, request.name, request.new_name)
        return pb.Empty()

    @rpc
    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> pb.Empty:
        await self.core.mailboxes.subscribe(request.account, request.name, request.subscribed)
        return pb.Empty()

    @rpc
    async def GetMailboxStatus(self, request: pb.MailboxStatusRequest, context: Any) -> pb.MailboxStatus:
        return status_pb(*await self.core.mailboxes.status(request.account, request.name))

    @rpc
    async def ClaimRecent(self, request: pb.ClaimRecentRequest, context: Any) -> pb.ClaimRecentResponse:
        first, uidnext = await self.core.mailboxes.claim_recent(request.account, request.mailbox)
        return pb.ClaimRecentResponse(first_uid=first, uidnext=uidnext)

    # ---- messages

    @rpc
    async def Append(self, request_iterator: AsyncIterator[pb.AppendRequest], context: Any) -> pb.AppendResponse:
        limit = self.core.settings.max_message_size
        header, data = await read_stream(request_iterator, "header", limit, lambda h: h.size)
        if header.uid or header.pop3_uidl:
            raise InvalidRequest("uid and pop3_uidl are for Admin.ImportMessage")
        return await append(self.core, header, data)

    @rpc
    async def Deliver(self, request_iterator: AsyncIterator[pb.DeliverRequest], context: Any) -> pb.DeliverResponse:
        limit = self.core.settings.max_message_size
        envelope, data = await read_stream(request_iterator, "envelope", limit, lambda e: e.size)
        if not envelope.recipients or len(envelope.recipients) > 1000:
            raise InvalidRequest("1..1000 recipients required")
        deliver = self.forwarding.deliver if self.forwarding is not None else self.core.delivery.deliver
        recipients = list(envelope.recipients)
        outcomes, message_id = await deliver(envelope.sender, recipients, data, envelope.mailbox or "INBOX")
        return pb.DeliverResponse(results=[translate.recipient_result_pb(o) for o in outcomes], message_id=message_id)

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
        status = status_pb(*await self.core.mailboxes.status(account, request.mailbox)) if request.with_status else None
        mailbox, records = await self.core.reading.fetch_metadata(account, request.mailbox, uids, request.changed_since)
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
        body = await self.core.reading.fetch_body(
            request.account, request.mailbox, request.uid, request.section, partial
        )
        first = True
        async with closed_after(body.chunks) as chunks:
            async for chunk in chunks:
                await context.write(pb.FetchBodyResponse(total_size=body.total_size if first else 0, data=chunk))
                first = False
        if first:
            await context.write(pb.FetchBodyResponse(total_size=body.total_size))

    @rpc
    async def FetchBodies(self, request: pb.FetchBodiesRequest, context: Any) -> None:  # type: ignore[override,unused-ignore]
        # context.write, as in FetchBody (see _BodiesWriter)
        if len(request.sections) > MAX_SECTIONS:
            raise InvalidRequest(f"at most {MAX_SECTIONS} sections")
        uids = uid_ranges(request.uids)
        if not uids:
            return
        wanted = translate.wanted_sections(request.sections)
        fields = request.metadata if request.HasField("metadata") else None
        writer = _BodiesWriter(context)
        items = self.core.reading.fetch_bodies(request.account, request.mailbox, uids, wanted, request.max_bytes)
        async with closed_after(items):
            async for record, index, body in items:
                meta = metadata_pb(record, fields) if fields is not None and index == 0 else None
                await writer.body(record.uid, index, body, meta)
        await writer.flush()

    @rpc
    async def StoreFlags(self, request: pb.StoreFlagsRequest, context: Any) -> pb.StoreFlagsResponse:
        updated, failed = await self.core.changes.store_flags(
            request.account,
            request.mailbox,
            uid_ranges(request.uids),
            translate.STORE_MODES[request.mode],
            list(request.flags),
            request.unchanged_since if request.has_unchanged_since else None,
        )
        return pb.StoreFlagsResponse(
            updated=[pb.MessageMetadata(uid=u.uid, modseq=u.modseq, flags=u.flags) for u in updated], failed=failed
        )

    async def _copy(self, request: pb.CopyRequest, move: bool) -> pb.CopyResponse:
        result = await self.core.changes.copy(
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
        result = await self.core.changes.expunge(request.account, request.mailbox, uids)
        return pb.ExpungeResponse(expunged=result.expunged, highestmodseq=result.modseq)

    @rpc
    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        key = request.key if request.HasField("key") else pb.SearchKey(all=True)
        uids, top = await self.core.reading.search(request.account, request.mailbox, key)
        return pb.SearchResponse(uids=uids, highestmodseq=top)

    @stream_rpc
    async def SearchSortData(self, request: pb.SearchRequest, context: Any) -> AsyncIterator[pb.SortDataResponse]:
        # IMAP SORT/THREAD (RFC 5256): a batch per response, so no mailbox is too big for one message
        key = request.key if request.HasField("key") else pb.SearchKey(all=True)
        hits = await self.core.reading.search_records(request.account, request.mailbox, key)
        for i in range(0, len(hits), SORT_DATA_BATCH):
            batch = hits[i : i + SORT_DATA_BATCH]
            data = [translate.sort_data_pb(r, request.with_references) for r in batch]
            yield pb.SortDataResponse(uids=[r.uid for r in batch], sort_data=data)

    @rpc
    async def GetQuota(self, request: pb.GetQuotaRequest, context: Any) -> pb.Quota:
        record = await self.core.accounts.account(request.account)
        usage = await self.core.accounts.usage(record)
        return pb.Quota(
            used_bytes=usage.bytes,
            limit_bytes=record.quota_bytes,
            used_messages=usage.messages,
            limit_messages=record.quota_messages,
        )

    @rpc
    async def GetChanges(self, request: pb.GetChangesRequest, context: Any) -> pb.GetChangesResponse:
        status = None
        if request.with_status:  # the status before the changes (ADR 0041)
            mailbox, counts, changes, pruned = await self.core.changes.status_and_changes(
                request.account, request.mailbox, request.since_modseq
            )
            status = status_pb(mailbox, counts)
        else:
            mailbox, changes, pruned = await self.core.changes.changes_since(
                request.account, request.mailbox, request.since_modseq
            )
        return pb.GetChangesResponse(
            changes=[translate.change_pb(c) for c in changes],
            highestmodseq=mailbox.highestmodseq,
            uidvalidity=mailbox.uidvalidity,
            pruned_modseq=pruned,
            status=status,
        )

    @stream_rpc
    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.ChangeEvent]:
        subscription = await self.core.changes.watch(request.account)
        try:
            # The first event says the subscription is live (kind unspecified): a caller that
            # reconnects catches up from then on, with no window in which a change goes unseen.
            yield pb.ChangeEvent(account=request.account)
            async for event in subscription:
                yield translate.change_event_pb(event)
        finally:
            await subscription.close()

    @rpc
    async def AcquireLease(self, request: pb.LeaseRequest, context: Any) -> pb.LeaseResponse:
        granted, holder = await self.core.changes.acquire_lease(request.name, request.holder, request.ttl_seconds)
        return pb.LeaseResponse(granted=granted, holder=holder)

    @rpc
    async def ReleaseLease(self, request: pb.LeaseRequest, context: Any) -> pb.Empty:
        await self.core.changes.release_lease(request.name, request.holder)
        return pb.Empty()

    @rpc
    async def ReportSessions(self, request: pb.ReportSessionsRequest, context: Any) -> pb.ReportSessionsResponse:
        records = [translate.session_record(s, request.frontend) for s in request.sessions]
        kicks = await self.core.sessions.report(request.frontend, records, request.ttl_seconds)
        return pb.ReportSessionsResponse(kicks=[translate.kick_pb(k) for k in kicks])


async def append(core: MailstoreCore, header: pb.AppendHeader, data: bytes) -> pb.AppendResponse:
    when = translate.to_datetime(header.internal_date) if header.HasField("internal_date") else None
    kept = (header.uid, header.pop3_uidl)
    result = await core.delivery.append(header.account, header.mailbox, data, list(header.flags), when, kept)
    return pb.AppendResponse(uid=result.uid, uidvalidity=result.uidvalidity, modseq=result.modseq)


class AdminServicer(pbg.AdminServicer):
    def __init__(self, core: MailstoreCore) -> None:
        self.core = core
        self.accounts = core.accounts
        self.forwarding: Forwarding | None = None  # set by the server once the queue is open (issue 18)

    async def _account_pb(self, name: str) -> pb.Account:
        return translate.account_pb(await self.accounts.summary(await self.accounts.account(name)))

    @rpc
    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Any) -> pb.Account:
        record = await self.accounts.create(
            request.name, request.password, request.quota_bytes, request.quota_messages, request.password_hash
        )
        return translate.account_pb(await self.accounts.summary(record))

    @rpc
    async def SetPassword(self, request: pb.SetPasswordRequest, context: Any) -> pb.Empty:
        await self.accounts.set_password(request.name, request.password, request.password_hash)
        return pb.Empty()

    @rpc
    async def DeleteAccount(self, request: pb.DeleteAccountRequest, context: Any) -> pb.Empty:
        await self.accounts.delete(request.name)
        return pb.Empty()

    @rpc
    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        return await self._account_pb(request.name)

    @rpc
    async def ListAccounts(self, request: pb.ListAccountsRequest, context: Any) -> pb.ListAccountsResponse:
        records = await self.accounts.list_accounts()
        return pb.ListAccountsResponse(accounts=[translate.account_pb(await self.accounts.summary(r)) for r in records])

    @rpc
    async def SetQuota(self, request: pb.SetQuotaRequest, context: Any) -> pb.Account:
        record = await self.accounts.set_quota(request.name, request.quota_bytes, request.quota_messages)
        return translate.account_pb(await self.accounts.summary(record))

    @rpc
    async def AddDomain(self, request: pb.AddDomainRequest, context: Any) -> pb.Domain:
        return pb.Domain(name=await self.accounts.add_domain(request.name))

    @rpc
    async def DeleteDomain(self, request: pb.DeleteDomainRequest, context: Any) -> pb.DeleteDomainResponse:
        accounts, aliases = await self.accounts.delete_domain(request.name, force=request.force)
        return pb.DeleteDomainResponse(accounts_deleted=accounts, aliases_deleted=aliases)

    @rpc
    async def ListDomains(self, request: pb.ListDomainsRequest, context: Any) -> pb.ListDomainsResponse:
        return pb.ListDomainsResponse(domains=[pb.Domain(name=d) for d in await self.accounts.list_domains()])

    @rpc
    async def AddAlias(self, request: pb.AddAliasRequest, context: Any) -> pb.Alias:
        address, account = await self.accounts.add_alias(request.address, request.account)
        return pb.Alias(address=address, account=account)

    @rpc
    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: Any) -> pb.Empty:
        await self.accounts.delete_alias(request.address)
        return pb.Empty()

    @rpc
    async def ListAliases(self, request: pb.ListAliasesRequest, context: Any) -> pb.ListAliasesResponse:
        pairs = await self.accounts.list_aliases(request.account)
        return pb.ListAliasesResponse(aliases=[pb.Alias(address=a, account=b) for a, b in pairs])

    @rpc
    async def SetForward(self, request: pb.Forward, context: Any) -> pb.Forward:
        assert self.forwarding is not None
        record = await self.forwarding.set_forward(request.address, list(request.targets), request.keep_copy)
        return pb.Forward(address=record.address, targets=record.targets, keep_copy=record.keep_copy)

    @rpc
    async def ListForwards(self, request: pb.ListForwardsRequest, context: Any) -> pb.ListForwardsResponse:
        assert self.forwarding is not None
        forwards = [pb.Forward(address=f.address, targets=f.targets, keep_copy=f.keep_copy)
                    for f in await self.forwarding.list_forwards()]  # fmt: skip
        return pb.ListForwardsResponse(forwards=forwards)

    @rpc
    async def RecomputeQuota(self, request: pb.RecomputeQuotaRequest, context: Any) -> pb.RecomputeQuotaResponse:
        records = await self.accounts.recompute_quota(request.account)
        return pb.RecomputeQuotaResponse(
            accounts=[translate.account_pb(await self.accounts.summary(r)) for r in records]
        )

    @rpc
    async def CheckIntegrity(self, request: pb.CheckIntegrityRequest, context: Any) -> pb.CheckIntegrityResponse:
        report = await self.core.maintenance.check_integrity(
            request.account, request.repair, request.min_age_seconds or None
        )
        return translate.integrity_pb(report)

    @rpc
    async def ListSessions(self, request: pb.ListSessionsRequest, context: Any) -> pb.ListSessionsResponse:
        records = await self.core.sessions.list(request.account)
        return pb.ListSessionsResponse(sessions=[translate.session_pb(r) for r in records])

    @rpc
    async def KickSessions(self, request: pb.KickSessionsRequest, context: Any) -> pb.KickSessionsResponse:
        return pb.KickSessionsResponse(sessions=await self.core.sessions.kick(request.account, request.protocol))

    @rpc
    async def ImportMailbox(self, request: pb.ImportMailboxRequest, context: Any) -> pb.MailboxStatus:
        await self.core.mailboxes.adopt(request.account, request.name, request.uidvalidity, request.uidnext)
        return status_pb(*await self.core.mailboxes.status(request.account, request.name))

    @rpc
    async def ImportMessage(self, request_iterator: AsyncIterator[pb.AppendRequest], context: Any) -> pb.AppendResponse:
        limit = self.core.settings.max_message_size
        header, data = await read_stream(request_iterator, "header", limit, lambda h: h.size)
        return await append(self.core, header, data)
