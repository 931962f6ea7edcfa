"""`mailstack mail search|fetch|expunge|move`: an account's mail by IMAP SEARCH query, as doveadm's
commands of the same names do it, over the Mailstore API with the admin identity.

The query is IMAP SEARCH syntax (RFC 9051 §6.4.4), parsed by the IMAP server's own pure parser
and translated as an IMAP session would after SELECT, so `FROM bob SINCE 1-Jan-2026`, `UID 5:*`,
`NOT SEEN`, `OR ... ...` and `1:10` (message numbers in UID order) mean what a client means.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import dataclass
from typing import Any

from mailstack.services.imap.mailbox_view import MailboxView
from mailstack.services.imap.mailstore import uid_set
from mailstack.services.imap.protocol.grammar import GrammarError, Reader
from mailstack.services.imap.protocol.search import parse_search_keys
from mailstack.services.imap.replies import ImapError
from mailstack.services.imap.search_keys import translate
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from .output import CommandError, Output, format_table, human_size

CALL_TIMEOUT = 120.0


@dataclass(frozen=True)
class Match:
    mailbox: str
    uidvalidity: int
    messages: tuple[pb.MessageMetadata, ...]


def _query(words: list[str]) -> bytes:
    text = " ".join(words).strip()
    if not text:
        raise CommandError("no query: give IMAP SEARCH keys, e.g. ALL, FROM bob, SINCE 1-Jan-2026")
    return text.encode("utf-8")


def _mailboxes(store: pbg.MailstoreStub, account: str, only: str) -> list[str]:
    if only:
        return [only]
    reply = store.ListMailboxes(pb.ListMailboxesRequest(account=account), timeout=CALL_TIMEOUT)
    return [m.name for m in reply.mailboxes if not m.nonexistent]


def _listing(store: pbg.MailstoreStub, account: str, mailbox: str, uids: pb.UidSet | None, envelope: bool) -> Any:
    fields = pb.MetadataFields(flags=True, internal_date=envelope, size=envelope, envelope=envelope)
    request = pb.FetchMetadataRequest(account=account, mailbox=mailbox, fields=fields, with_status=uids is None)
    if uids is not None:
        request.uids.CopyFrom(uids)
    return store.FetchMetadata(request, timeout=CALL_TIMEOUT)


def _search_mailbox(store: pbg.MailstoreStub, account: str, mailbox: str, query: bytes, envelope: bool) -> Match:
    """The mailbox's matches: the listing builds the view message numbers refer to, as SELECT does."""
    status: pb.MailboxStatus | None = None
    messages: list[tuple[int, list[str], int]] = []
    for reply in _listing(store, account, mailbox, None, False):
        if reply.HasField("status"):
            status = reply.status
        messages.extend((m.uid, list(m.flags), m.modseq) for m in reply.messages)
    if status is None:
        raise CommandError(f"{mailbox}: the mailstore sent no status")
    view = MailboxView(mailbox, True, status.uidvalidity, status.uidnext, status.highestmodseq, messages)
    try:
        key, _ = translate(parse_search_keys(Reader(query)), view)
    except (GrammarError, ImapError) as err:
        raise CommandError(f"bad query: {err}") from None
    found = store.Search(pb.SearchRequest(account=account, mailbox=mailbox, key=key), timeout=CALL_TIMEOUT)
    if not found.uids:
        return Match(mailbox, status.uidvalidity, ())
    listed = _listing(store, account, mailbox, uid_set(found.uids), envelope)
    return Match(mailbox, status.uidvalidity, tuple(m for reply in listed for m in reply.messages))


def _matches(store: pbg.MailstoreStub, args: argparse.Namespace, envelope: bool = False) -> list[Match]:
    query = _query(args.query)
    skip = getattr(args, "destination", "")
    return [
        _search_mailbox(store, args.account, name, query, envelope)
        for name in _mailboxes(store, args.account, args.mailbox)
        if name != skip
    ]


def _address(envelope: pb.Envelope) -> str:
    senders = getattr(envelope, "from")  # a Python keyword as a field name
    if not senders:
        return ""
    first = senders[0]
    return f"{first.mailbox.decode(errors='replace')}@{first.host.decode(errors='replace')}"


def _date(value: pb.DateTime) -> str:
    moment = datetime.datetime.fromtimestamp(value.unix_seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M")


def _message_dict(match: Match, m: pb.MessageMetadata) -> dict[str, Any]:
    return {
        "mailbox": match.mailbox,
        "uidvalidity": match.uidvalidity,
        "uid": m.uid,
        "flags": list(m.flags),
        "internal_date": m.internal_date.unix_seconds,
        "size": m.size,
        "from": _address(m.envelope),
        "subject": m.envelope.subject.decode("utf-8", "replace") if m.envelope.HasField("subject") else "",
    }


def cmd_mail_search(store: pbg.MailstoreStub, args: argparse.Namespace, out: Output) -> None:
    """Every matching message with where it is (mailbox, UIDVALIDITY, UID) and what it is."""
    found = [_message_dict(match, m) for match in _matches(store, args, envelope=True) for m in match.messages]
    rows = [
        [f["mailbox"], str(f["uid"]), _date(pb.DateTime(unix_seconds=f["internal_date"])), human_size(f["size"]),
         f["from"], f["subject"][:60]]
        for f in found
    ]  # fmt: skip
    out.emit(found, format_table(["MAILBOX", "UID", "DATE", "SIZE", "FROM", "SUBJECT"], rows))


def cmd_mail_fetch(store: pbg.MailstoreStub, args: argparse.Namespace, out: Output) -> None:
    """The message as stored, byte for byte, to stdout (or its header only)."""
    section = pb.Section(part=[], text=pb.SECTION_HEADER) if args.header else pb.Section()
    request = pb.FetchBodyRequest(account=args.account, mailbox=args.mailbox, uid=args.uid, section=section)
    chunks = store.FetchBody(request, timeout=CALL_TIMEOUT)
    data = b"".join(chunk.data for chunk in chunks)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def cmd_mail_expunge(store: pbg.MailstoreStub, args: argparse.Namespace, out: Output) -> None:
    """Expunge the matches for good (clients see EXPUNGE / VANISHED, as for their own)."""
    counts: dict[str, int] = {}
    for match in _matches(store, args):
        uids = [m.uid for m in match.messages]
        if uids:
            # UID EXPUNGE semantics (RFC 4315 §2.1): only messages marked \Deleted go, so mark them first
            flagged = pb.StoreFlagsRequest(
                account=args.account, mailbox=match.mailbox, uids=uid_set(uids), mode=pb.STORE_ADD, flags=["\\Deleted"]
            )
            store.StoreFlags(flagged, timeout=CALL_TIMEOUT)
            request = pb.ExpungeRequest(account=args.account, mailbox=match.mailbox, uids=uid_set(uids))
            counts[match.mailbox] = len(store.Expunge(request, timeout=CALL_TIMEOUT).expunged)
    total = sum(counts.values())
    out.done({"expunged": counts, "total": total}, f"expunged {total} message(s)")


def cmd_mail_move(store: pbg.MailstoreStub, args: argparse.Namespace, out: Output) -> None:
    """Move the matches into DESTINATION (RFC 6851 semantics: new UIDs there, expunged here)."""
    counts: dict[str, int] = {}
    for match in _matches(store, args):
        uids = [m.uid for m in match.messages]
        if uids:
            request = pb.CopyRequest(
                account=args.account, mailbox=match.mailbox, uids=uid_set(uids), destination=args.destination
            )
            counts[match.mailbox] = len(store.Move(request, timeout=CALL_TIMEOUT).mapping)
    total = sum(counts.values())
    out.done({"moved": counts, "total": total}, f"moved {total} message(s) to {args.destination}")
