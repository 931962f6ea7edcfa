"""What the POP3 session needs from the mailstore's gRPC API, with errors mapped to POP3 terms."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import grpc
import grpc.aio
from mailstack.services.common.grpc_client import error_detail, mailstore_stub, stream_whole_bodies
from mailstack.v1 import mailstore_pb2 as pb

INBOX = "INBOX"  # the maildrop is the account's INBOX
CALL_TIMEOUT = 30.0  # seconds for unary calls; body streams are bounded by the session's idle timeout
_TEMPORARY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class MailstoreError(Exception):
    """The mailstore refused or failed a call. `temporary` -> -ERR [SYS/TEMP], else [SYS/PERM]."""

    def __init__(self, message: str, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


class AuthFailed(Exception):
    """Wrong credentials (the mailstore never says whether the account exists)."""


class AuthThrottled(Exception):
    """Too many login attempts from this IP or at this account, in all protocols (ADR 0011)."""


class MessageGone(Exception):
    """The message was expunged by another client since the session's snapshot."""


@dataclass(frozen=True, slots=True)
class Lease:
    prefix: str  # the lock is named prefix + account
    holder: str
    ttl: int


@dataclass(frozen=True, slots=True)
class MessageInfo:
    uid: int
    size: int
    uidl: str = ""  # kept from the server it was imported from; "" = the default


@dataclass(frozen=True, slots=True)
class Snapshot:
    uidvalidity: int
    messages: tuple[MessageInfo, ...]


# The maildrop listing: UIDs and sizes of the INBOX (asked with the login, or on its own)
_LISTING = pb.FetchMetadataRequest(mailbox=INBOX, fields=pb.MetadataFields(size=True, pop3_uidl=True))


def _snapshot(uidvalidity: int, batches: list[pb.FetchMetadataResponse]) -> Snapshot:
    messages = [MessageInfo(m.uid, m.size, m.pop3_uidl) for batch in batches for m in batch.messages]
    messages.sort(key=lambda m: m.uid)
    return Snapshot(uidvalidity, tuple(messages))


def _mapped(err: grpc.RpcError) -> Exception:
    detail = error_detail(err)
    reason = detail.reason if detail is not None else pb.ERROR_REASON_UNSPECIFIED
    code = err.code() if callable(getattr(err, "code", None)) else None
    if reason == pb.AUTH_THROTTLED:
        return AuthThrottled()
    if reason == pb.AUTH_FAILED or code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthFailed()
    if reason == pb.MESSAGE_NOT_FOUND:
        return MessageGone()
    temporary = code in _TEMPORARY or reason == pb.STORAGE_UNAVAILABLE
    return MailstoreError(f"mailstore: {code.name.lower() if code else 'error'}", temporary)


def _uid_set(uids: list[int]) -> pb.UidSet:
    """Exactly these UIDs, consecutive ones as one range (a maildrop read in order is one range)."""
    ranges: list[list[int]] = []
    for uid in sorted(uids):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        elif not ranges or uid != ranges[-1][1]:
            ranges.append([uid, uid])
    return pb.UidSet(ranges=[pb.UidRange(first=first, last=last) for first, last in ranges])


class Pop3Mailstore:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = mailstore_stub(channel)

    async def authenticate(
        self, username: str, password: str, authzid: str, remote_ip: str, lease: Lease
    ) -> tuple[str, bool, Snapshot | None]:
        """The canonical account, whether the maildrop lock (lease.prefix + account) was taken for
        lease.holder, and, when it was, the maildrop's snapshot: all in one call. The snapshot is
        None when the mailstore did not send it (a maildrop too big for one reply): call
        snapshot() then."""
        request = pb.AuthenticateRequest(
            username=username,
            password=password,
            authzid=authzid,
            remote_ip=remote_ip,
            protocol="pop3",
            lease=pb.LeaseRequest(name=lease.prefix, holder=lease.holder, ttl_seconds=lease.ttl),
            listing=_LISTING,
        )
        try:
            reply = await self._stub.Authenticate(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            raise _mapped(err) from None
        listing = _snapshot(reply.listing.uidvalidity, [reply.listing]) if reply.HasField("listing") else None
        return str(reply.account), reply.lease.granted, listing

    async def acquire_lease(self, name: str, holder: str, ttl: int) -> bool:
        """Acquires or renews; False when someone else holds it."""
        try:
            reply = await self._stub.AcquireLease(
                pb.LeaseRequest(name=name, holder=holder, ttl_seconds=ttl), timeout=CALL_TIMEOUT
            )
        except grpc.RpcError as err:
            raise _mapped(err) from None
        return bool(reply.granted)

    async def release_lease(self, name: str, holder: str) -> None:
        try:
            await self._stub.ReleaseLease(pb.LeaseRequest(name=name, holder=holder), timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            raise _mapped(err) from None

    async def snapshot(self, account: str) -> Snapshot:
        """The INBOX's messages in UID order with their sizes (RFC 1939 §5: numbering fixed at login)."""
        request = pb.FetchMetadataRequest(account=account, mailbox=INBOX, fields=_LISTING.fields)
        batches: list[pb.FetchMetadataResponse] = []
        uidvalidity = 0
        try:
            async for batch in self._stub.FetchMetadata(request, timeout=CALL_TIMEOUT):
                uidvalidity = batch.uidvalidity  # one call: the UIDs and the uidvalidity they belong to
                batches.append(batch)
        except grpc.RpcError as err:
            raise _mapped(err) from None
        return _snapshot(uidvalidity, batches)

    async def body(
        self, account: str, uid: int, text: pb.SectionText.ValueType = pb.SECTION_ALL
    ) -> AsyncGenerator[bytes, None]:
        """The message (or its HEADER / TEXT section) in chunks; closing the iterator early cancels
        the stream. A missing message raises MessageGone at the first read, so the session reads
        one chunk before it answers +OK."""
        request = pb.FetchBodyRequest(account=account, mailbox=INBOX, uid=uid, section=pb.Section(text=text))
        call = self._stub.FetchBody(request)
        try:
            async for reply in call:
                if reply.data:
                    yield reply.data
        except grpc.RpcError as err:
            raise _mapped(err) from None
        finally:
            call.cancel()

    async def bodies(self, account: str, uids: list[int]) -> AsyncGenerator[tuple[int, bytes, bool], None]:
        """Whole messages of several UIDs in one FetchBodies call, each as it arrives: (uid, bytes,
        only CRLF line ends). A message gone is never yielded; closing the iterator cancels the call."""
        items = stream_whole_bodies(self._stub, account, INBOX, _uid_set(uids), CALL_TIMEOUT)
        try:
            async with contextlib.aclosing(items):
                async for item in items:
                    yield item
        except grpc.RpcError as err:
            raise _mapped(err) from None

    async def delete(self, account: str, uids: list[int]) -> list[int]:
        """Flag exactly these UIDs \\Deleted and expunge exactly them (never messages another client
        flagged). Returns the expunged UIDs."""
        if not uids:
            return []
        uid_set = _uid_set(uids)
        try:
            await self._stub.StoreFlags(
                pb.StoreFlagsRequest(
                    account=account, mailbox=INBOX, uids=uid_set, mode=pb.STORE_ADD, flags=["\\Deleted"]
                ),
                timeout=CALL_TIMEOUT,
            )
            reply = await self._stub.Expunge(
                pb.ExpungeRequest(account=account, mailbox=INBOX, uids=uid_set), timeout=CALL_TIMEOUT
            )
        except grpc.RpcError as err:
            raise _mapped(err) from None
        return list(reply.expunged)
