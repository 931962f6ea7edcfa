"""Pop3Mailstore against a mailstore older than the fields it uses (a rolling upgrade)."""

from __future__ import annotations

from typing import Any

from mailstack.services.pop3.mailstore import Lease, Pop3Mailstore
from mailstack.v1 import mailstore_pb2 as pb


class OldStub:
    """Answers as a mailstore that knows neither AuthenticateRequest.lease nor
    FetchMetadataResponse.uidvalidity: those fields stay unset."""

    def __init__(self) -> None:
        self.leases: list[pb.LeaseRequest] = []

    async def Authenticate(self, request: pb.AuthenticateRequest, **options: Any) -> pb.AuthenticateResponse:
        return pb.AuthenticateResponse(account="alice@example.test")

    async def AcquireLease(self, request: pb.LeaseRequest, **options: Any) -> pb.LeaseResponse:
        self.leases.append(request)
        return pb.LeaseResponse(granted=True)

    def FetchMetadata(self, request: pb.FetchMetadataRequest, **options: Any) -> Any:
        async def replies() -> Any:
            yield pb.FetchMetadataResponse(messages=[pb.MessageMetadata(uid=2, size=10)])

        return replies()

    async def GetMailboxStatus(self, request: pb.MailboxStatusRequest, **options: Any) -> pb.MailboxStatus:
        return pb.MailboxStatus(uidvalidity=77)


def old_mailstore() -> tuple[Pop3Mailstore, OldStub]:
    store = Pop3Mailstore.__new__(Pop3Mailstore)
    stub = OldStub()
    store._stub = stub  # type: ignore[assignment]
    return store, stub


async def test_lease_is_asked_for_separately_when_the_login_ignored_it() -> None:
    store, stub = old_mailstore()
    account, locked, snapshot = await store.authenticate("alice", "pw", "", "127.0.0.1", Lease("pop3:", "me", 30))
    assert account == "alice@example.test" and locked
    assert snapshot is None, "nor does it list the maildrop: the session asks FetchMetadata"
    assert [(r.name, r.holder, r.ttl_seconds) for r in stub.leases] == [("pop3:alice@example.test", "me", 30)]


async def test_uidvalidity_is_asked_for_when_the_metadata_lacks_it() -> None:
    # UIDL values are built from it: 0 would change every UIDL and make clients fetch everything again
    store, _ = old_mailstore()
    snapshot = await store.snapshot("alice@example.test")
    assert snapshot.uidvalidity == 77 and [(m.uid, m.size) for m in snapshot.messages] == [(2, 10)]
