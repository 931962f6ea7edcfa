"""Pop3Mailstore's login and listing: the maildrop comes with the login, or, for a maildrop too big
for one reply (AuthenticateResponse.listing absent), from snapshot() in one FetchMetadata call."""

from __future__ import annotations

from typing import Any

from mailstack.services.pop3.mailstore import Lease, Pop3Mailstore
from mailstack.v1 import mailstore_pb2 as pb


class Stub:
    """Grants the lease; sends the listing with the login only when `listed`; records the calls."""

    def __init__(self, listed: bool) -> None:
        self.listed = listed
        self.calls: list[str] = []

    async def Authenticate(self, request: pb.AuthenticateRequest, **options: Any) -> pb.AuthenticateResponse:
        self.calls.append("Authenticate")
        reply = pb.AuthenticateResponse(account="alice@example.test", lease=pb.LeaseResponse(granted=True))
        if self.listed:
            reply.listing.CopyFrom(
                pb.FetchMetadataResponse(messages=[pb.MessageMetadata(uid=2, size=10)], uidvalidity=77)
            )
        return reply

    def FetchMetadata(self, request: pb.FetchMetadataRequest, **options: Any) -> Any:
        self.calls.append("FetchMetadata")

        async def replies() -> Any:
            yield pb.FetchMetadataResponse(messages=[pb.MessageMetadata(uid=5, size=30)], uidvalidity=77)
            yield pb.FetchMetadataResponse(messages=[pb.MessageMetadata(uid=2, size=10)], uidvalidity=77)

        return replies()


def mailstore(listed: bool) -> tuple[Pop3Mailstore, Stub]:
    store = Pop3Mailstore.__new__(Pop3Mailstore)
    stub = Stub(listed)
    store._stub = stub  # type: ignore[assignment]
    return store, stub


async def login(store: Pop3Mailstore) -> Any:
    return await store.authenticate("alice", "pw", "", "127.0.0.1", Lease("pop3:", "me", 30))


async def test_the_login_brings_the_lock_and_the_maildrop() -> None:
    store, stub = mailstore(listed=True)
    account, locked, snapshot = await login(store)
    assert account == "alice@example.test" and locked
    assert snapshot is not None and snapshot.uidvalidity == 77
    assert [(m.uid, m.size) for m in snapshot.messages] == [(2, 10)]
    assert stub.calls == ["Authenticate"]


async def test_a_maildrop_too_big_for_the_login_is_listed_on_its_own() -> None:
    store, stub = mailstore(listed=False)
    account, locked, snapshot = await login(store)
    assert locked and snapshot is None, "the session then asks snapshot()"
    snapshot = await store.snapshot(account)
    # UIDL values are built from the uidvalidity: it comes with the UIDs, in the same call
    assert snapshot.uidvalidity == 77 and [(m.uid, m.size) for m in snapshot.messages] == [(2, 10), (5, 30)]
    assert stub.calls == ["Authenticate", "FetchMetadata"]
