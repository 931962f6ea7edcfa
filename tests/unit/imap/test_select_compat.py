"""SELECT's listing against a mailstore older than FetchMetadataRequest.with_status (a rolling
upgrade): it must fall back to GetMailboxStatus first, then the listing, never the other way round."""

from __future__ import annotations

from typing import Any

from mailstack.services.imap.commands.select import open_view
from mailstack.services.imap.mailstore import ImapMailstore
from mailstack.v1 import mailstore_pb2 as pb


class OldStub:
    """Ignores with_status; records the order of the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def FetchMetadata(self, request: pb.FetchMetadataRequest, **options: Any) -> Any:
        self.calls.append("FetchMetadata")

        async def replies() -> Any:
            yield pb.FetchMetadataResponse(messages=[pb.MessageMetadata(uid=3, modseq=7, flags=["\\Seen"])])

        return replies()

    async def GetMailboxStatus(self, request: pb.MailboxStatusRequest, **options: Any) -> pb.MailboxStatus:
        self.calls.append("GetMailboxStatus")
        return pb.MailboxStatus(uidvalidity=11, uidnext=4, highestmodseq=7, messages=1)


class FakeSession:
    account = "alice@example.test"

    def __init__(self) -> None:
        self.stub = OldStub()
        self.mailstore = ImapMailstore(self.stub, self.account)  # type: ignore[arg-type]


async def test_select_falls_back_to_status_then_listing() -> None:
    session = FakeSession()
    view = await open_view(session, "INBOX", readonly=True)  # type: ignore[arg-type]
    # the listing that counts comes after the status: its MODSEQ is never newer than the messages
    assert session.stub.calls == ["FetchMetadata", "GetMailboxStatus", "FetchMetadata"]
    assert view.uidvalidity == 11 and view.uids == [3] and view.modseq == 7
