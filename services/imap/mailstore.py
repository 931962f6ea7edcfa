"""What the IMAP handlers need from the mailstore's gRPC API (as services/pop3/mailstore.py is for
POP3): methods with domain arguments that build the protobuf requests, so no handler does.
Failures stay grpc.RpcError; the command loop maps them to IMAP answers (errors.from_grpc)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

import grpc
from mailstack.services.common.grpc_client import collect_bodies, error_detail, stream_whole_bodies
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from .mailbox_view import EXPUNGE, FLAGS, NEW, Change
from .protocol import FetchBody
from .protocol.encoder import ranges_of

# Per-call deadlines (seconds): reads of many messages and uploads get longer than small calls.
SHORT = 30.0
UNARY = 60.0
LONG = 120.0
APPEND_CHUNK = 1 << 20

_SECTION_TEXTS = {
    None: pb.SECTION_ALL,
    "HEADER": pb.SECTION_HEADER,
    "HEADER.FIELDS": pb.SECTION_HEADER_FIELDS,
    "HEADER.FIELDS.NOT": pb.SECTION_HEADER_FIELDS_NOT,
    "TEXT": pb.SECTION_TEXT,
    "MIME": pb.SECTION_MIME,
}
# RFC 6154 §2 special-use attributes <-> the mailstore's enum
SPECIAL_USE_ATTRIBUTES = {
    pb.SPECIAL_USE_SENT: "\\Sent",
    pb.SPECIAL_USE_DRAFTS: "\\Drafts",
    pb.SPECIAL_USE_TRASH: "\\Trash",
    pb.SPECIAL_USE_JUNK: "\\Junk",
    pb.SPECIAL_USE_ARCHIVE: "\\Archive",
    pb.SPECIAL_USE_ALL: "\\All",
    pb.SPECIAL_USE_FLAGGED: "\\Flagged",
}
SPECIAL_USE_BY_NAME = {v.lower(): k for k, v in SPECIAL_USE_ATTRIBUTES.items()}
_STORE_MODES = {"+": pb.STORE_ADD, "-": pb.STORE_REMOVE, "": pb.STORE_REPLACE}


def uid_set(uids: Iterable[int]) -> pb.UidSet:
    return pb.UidSet(ranges=[pb.UidRange(first=a, last=b) for a, b in ranges_of(uids)])


@dataclass(frozen=True, slots=True)
class MetadataWanted:
    """Which per-message fields a listing reads (UID and MODSEQ always come)."""

    flags: bool = False
    internal_date: bool = False
    size: bool = False
    envelope: bool = False
    body_structure: bool = False
    save_date: bool = False  # RFC 8514
    blob_key: bool = False  # RFC 8474 EMAILID

    def any(self) -> bool:
        # field by field: dataclasses.astuple deep-copies, and this runs once per FETCH
        return (
            self.flags
            or self.internal_date
            or self.size
            or self.envelope
            or self.body_structure
            or self.save_date
            or self.blob_key
        )

    def request(self) -> pb.MetadataFields:
        return pb.MetadataFields(
            flags=self.flags,
            internal_date=self.internal_date,
            size=self.size,
            envelope=self.envelope,
            body_structure=self.body_structure,
            save_date=self.save_date,
            blob_key=self.blob_key,
        )


@dataclass(frozen=True, slots=True)
class Appended:
    uid: int
    uidvalidity: int
    modseq: int


_CHANGE_KINDS = {pb.CHANGE_NEW: NEW, pb.CHANGE_FLAGS: FLAGS, pb.CHANGE_EXPUNGE: EXPUNGE}


@dataclass(frozen=True, slots=True)
class ChangeLog:
    """A mailbox's changes after a MODSEQ. `pruned_modseq` above the asked one: the log has lost
    expunges since then (the caller lists what is left instead)."""

    uidvalidity: int
    highestmodseq: int
    pruned_modseq: int
    changes: list[Change]

    def expunged(self) -> list[int]:
        return [c.uid for c in self.changes if c.kind == EXPUNGE]


def _change_log(reply: pb.GetChangesResponse) -> ChangeLog:
    changes = [Change(c.uid, c.modseq, _CHANGE_KINDS.get(c.kind, FLAGS), tuple(c.flags)) for c in reply.changes]
    return ChangeLog(reply.uidvalidity, reply.highestmodseq, reply.pruned_modseq, changes)


def throttled(err: grpc.RpcError) -> bool:
    """The mailstore refused a login attempt: too many from this IP or at this account (ADR 0011)."""
    detail = error_detail(err)
    return detail is not None and detail.reason == pb.AUTH_THROTTLED


def _body_section(item: FetchBody) -> pb.BodySection:
    section = item.section
    out = pb.BodySection(
        section=pb.Section(part=section.part, text=_SECTION_TEXTS[section.text], fields=section.fields)
    )
    if item.partial is not None:
        out.has_partial = True
        out.offset, out.length = item.partial
    return out


def _date_time(value: datetime.datetime) -> pb.DateTime:
    offset = value.utcoffset()
    return pb.DateTime(
        unix_seconds=int(value.timestamp()),
        utc_offset_minutes=int(offset.total_seconds() // 60) if offset else 0,
    )


class ImapMailstore:
    """The mailstore as one logged-in account's IMAP session sees it."""

    def __init__(self, stub: pbg.MailstoreAsyncStub, account: str) -> None:
        self.stub = stub
        self.account = account

    # ---- login

    async def authenticate(self, username: str, password: str, authzid: str, remote_ip: str) -> str:
        """The account name; raises grpc.RpcError (AUTH_FAILED, AUTH_THROTTLED, ...)."""
        request = pb.AuthenticateRequest(
            username=username, password=password, authzid=authzid, remote_ip=remote_ip, protocol="imap"
        )
        reply = await self.stub.Authenticate(request, timeout=SHORT)
        return str(reply.account)

    # ---- mailboxes

    async def create_mailbox(self, name: str, special_use: str = "") -> None:
        """`special_use`: an RFC 6154 attribute such as "\\Sent" (CREATE-SPECIAL-USE), or ""."""
        special = SPECIAL_USE_BY_NAME.get(special_use.lower(), pb.SPECIAL_USE_NONE)
        request = pb.CreateMailboxRequest(account=self.account, name=name, special_use=special)
        await self.stub.CreateMailbox(request, timeout=SHORT)

    async def delete_mailbox(self, name: str) -> None:
        await self.stub.DeleteMailbox(pb.DeleteMailboxRequest(account=self.account, name=name), timeout=SHORT)

    async def rename_mailbox(self, name: str, new_name: str) -> None:
        request = pb.RenameMailboxRequest(account=self.account, name=name, new_name=new_name)
        await self.stub.RenameMailbox(request, timeout=SHORT)

    async def subscribe(self, name: str, subscribed: bool) -> None:
        request = pb.SubscribeRequest(account=self.account, name=name, subscribed=subscribed)
        await self.stub.Subscribe(request, timeout=SHORT)

    async def list_mailboxes(
        self, pattern: str = "*", *, subscribed_only: bool = False, with_status: bool = False
    ) -> pb.ListMailboxesResponse:
        request = pb.ListMailboxesRequest(
            account=self.account, pattern=pattern, subscribed_only=subscribed_only, with_status=with_status
        )
        return await self.stub.ListMailboxes(request, timeout=SHORT)

    async def status(self, name: str, deadline: float = SHORT) -> pb.MailboxStatus:
        request = pb.MailboxStatusRequest(account=self.account, name=name)
        return await self.stub.GetMailboxStatus(request, timeout=deadline)

    async def quota(self) -> pb.Quota:
        return await self.stub.GetQuota(pb.GetQuotaRequest(account=self.account), timeout=SHORT)

    # ---- the selected mailbox

    async def changes(self, mailbox: str, since_modseq: int) -> ChangeLog:
        request = pb.GetChangesRequest(account=self.account, mailbox=mailbox, since_modseq=since_modseq)
        return _change_log(await self.stub.GetChanges(request, timeout=UNARY))

    async def status_and_changes(self, mailbox: str, since_modseq: int) -> tuple[pb.MailboxStatus, ChangeLog]:
        """The status, read before the changes after `since_modseq` (the mailbox index catching up)."""
        request = pb.GetChangesRequest(
            account=self.account, mailbox=mailbox, since_modseq=since_modseq, with_status=True
        )
        reply = await self.stub.GetChanges(request, timeout=UNARY)
        return reply.status, _change_log(reply)

    async def whole_mailbox(self, mailbox: str) -> tuple[pb.MailboxStatus, list[tuple[int, frozenset[str], int]]]:
        """The status, then every message's UID, flags and MODSEQ, in one call (the status is read
        first: its HIGHESTMODSEQ is never newer than the listing)."""
        status = pb.MailboxStatus()  # with_status: the first reply carries it (ADR 0019: no older mailstore)
        messages: list[tuple[int, frozenset[str], int]] = []
        async for batch in self.listing(mailbox, MetadataWanted(flags=True), with_status=True):
            if batch.HasField("status"):
                status = batch.status
            messages.extend((m.uid, frozenset(m.flags), m.modseq) for m in batch.messages)
        return status, messages

    async def claim_recent(self, mailbox: str) -> tuple[int, int]:
        """RFC 3501 §2.3.2: the UIDs [first, uidnext) whose \\Recent this session gets."""
        claim = await self.stub.ClaimRecent(pb.ClaimRecentRequest(account=self.account, mailbox=mailbox), timeout=UNARY)
        return claim.first_uid, claim.uidnext

    def listing(
        self,
        mailbox: str,
        wanted: MetadataWanted,
        *,
        uids: Iterable[int] | None = None,
        span: tuple[int, int] | None = None,
        changed_since: int = 0,
        with_status: bool = False,
        timeout: float = UNARY,
    ) -> AsyncIterable[pb.FetchMetadataResponse]:
        """The metadata of a mailbox's messages (of `uids`, or of the UIDs first..last of `span`,
        when given), in batches."""
        request = self.listing_request(mailbox, wanted, uids=uids, changed_since=changed_since, with_status=with_status)
        if span is not None:
            request.uids.CopyFrom(pb.UidSet(ranges=[pb.UidRange(first=span[0], last=span[1])]))
        return self.stub.FetchMetadata(request, timeout=timeout)

    def listing_request(
        self,
        mailbox: str,
        wanted: MetadataWanted,
        *,
        uids: Iterable[int] | None = None,
        changed_since: int = 0,
        with_status: bool = False,
    ) -> pb.FetchMetadataRequest:
        request = pb.FetchMetadataRequest(
            account=self.account,
            mailbox=mailbox,
            fields=wanted.request(),
            changed_since=changed_since,
            with_status=with_status,
        )
        if uids is not None:
            request.uids.CopyFrom(uid_set(uids))
        return request

    async def metadata(
        self, mailbox: str, uids: Iterable[int], wanted: MetadataWanted, changed_since: int = 0
    ) -> dict[int, pb.MessageMetadata]:
        out: dict[int, pb.MessageMetadata] = {}
        async for batch in self.listing(mailbox, wanted, uids=uids, changed_since=changed_since, timeout=LONG):
            for m in batch.messages:
                out[m.uid] = m
        return out

    async def bodies(
        self,
        mailbox: str,
        uids: Iterable[int],
        items: list[FetchBody],
        *,
        wanted: MetadataWanted | None = None,
        metadata: dict[int, pb.MessageMetadata] | None = None,
        missing: set[int] | None = None,
    ) -> dict[tuple[int, int], bytes]:
        """Every body section of every message in one FetchBodies call: {(uid, item index): bytes};
        with `wanted`, each message's metadata in the same call, into `metadata`."""
        request = pb.FetchBodiesRequest(
            account=self.account, mailbox=mailbox, uids=uid_set(uids), sections=[_body_section(i) for i in items]
        )
        if wanted is None:
            return await collect_bodies(self.stub, request, LONG, missing=missing)
        request.metadata.CopyFrom(wanted.request())
        return await collect_bodies(self.stub, request, LONG, metadata=metadata, missing=missing)

    def whole_bodies(
        self, mailbox: str, uids: Iterable[int], max_bytes: int
    ) -> AsyncGenerator[tuple[int, bytes, bool], None]:
        """Whole messages as they arrive, up to `max_bytes` (read-ahead)."""
        return stream_whole_bodies(self.stub, self.account, mailbox, uid_set(uids), LONG, max_bytes)

    async def store_flags(
        self,
        mailbox: str,
        uids: Iterable[int],
        mode: str,
        flags: Iterable[str],
        unchanged_since: int | None = None,
        deadline: float = UNARY,
    ) -> pb.StoreFlagsResponse:
        """mode "+" adds, "-" removes, "" replaces (RFC 9051 §6.4.6); UNCHANGEDSINCE RFC 7162 §3.1.3."""
        request = pb.StoreFlagsRequest(
            account=self.account, mailbox=mailbox, uids=uid_set(uids), mode=_STORE_MODES[mode]
        )
        request.flags.extend(flags)
        if unchanged_since is not None:
            request.has_unchanged_since = True
            request.unchanged_since = unchanged_since
        return await self.stub.StoreFlags(request, timeout=deadline)

    async def search(self, mailbox: str, key: pb.SearchKey) -> list[int]:
        reply = await self.stub.Search(pb.SearchRequest(account=self.account, mailbox=mailbox, key=key), timeout=LONG)
        return list(reply.uids)

    async def sort_data(
        self, mailbox: str, key: pb.SearchKey, references: bool = False
    ) -> list[tuple[int, pb.SortData]]:
        """(UID, what SORT/THREAD order by) of each message matching `key`, in UID order; with
        `references`, the References header too (THREAD REFERENCES)."""
        request = pb.SearchRequest(account=self.account, mailbox=mailbox, key=key, with_references=references)
        out: list[tuple[int, pb.SortData]] = []
        async for reply in self.stub.SearchSortData(request, timeout=LONG):
            out += zip(reply.uids, reply.sort_data, strict=True)
        return out

    async def expunge(self, mailbox: str, uids: Iterable[int] | None = None) -> list[int]:
        """Expunge the \\Deleted messages (of `uids`, when given); the UIDs expunged."""
        request = pb.ExpungeRequest(account=self.account, mailbox=mailbox)
        if uids is None:
            request.all_deleted = True
        else:
            request.uids.CopyFrom(uid_set(uids))
        reply = await self.stub.Expunge(request, timeout=UNARY)
        return list(reply.expunged)

    async def copy(self, mailbox: str, uids: Iterable[int], destination: str, move: bool) -> pb.CopyResponse:
        request = pb.CopyRequest(account=self.account, mailbox=mailbox, uids=uid_set(uids), destination=destination)
        call = self.stub.Move if move else self.stub.Copy
        return await call(request, timeout=LONG)

    async def append(
        self, mailbox: str, data: bytes, flags: Iterable[str], internal_date: datetime.datetime | None
    ) -> Appended:
        async def requests() -> AsyncIterator[pb.AppendRequest]:
            header = pb.AppendHeader(account=self.account, mailbox=mailbox, flags=list(flags), size=len(data))
            if internal_date is not None:
                header.internal_date.CopyFrom(_date_time(internal_date))
            yield pb.AppendRequest(header=header)
            for i in range(0, len(data), APPEND_CHUNK):
                yield pb.AppendRequest(chunk=data[i : i + APPEND_CHUNK])

        reply = await self.stub.Append(requests(), timeout=LONG)
        return Appended(reply.uid, reply.uidvalidity, reply.modseq)
