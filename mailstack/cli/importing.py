"""Moving mailboxes in from another server without clients noticing (issue 16, ADR 0036): the
part `mailstack import maildir` and `mailstack import imap` share.

A source (a Maildir tree, an IMAP account) is a list of folders, each with its UIDVALIDITY when
it has one and its messages with their UIDs, flags, dates and POP3 UIDLs. Each pass brings the
target mailbox in line with its folder:
- the UIDs are kept when the mailbox can take the folder's UIDVALIDITY (new, never used, or
  taken by an earlier pass): messages are stored under their old UIDs, then UIDNEXT is raised
  to the folder's; otherwise (or without a UID list) messages get new UIDs, and the report says
  why;
- a message already there (same UID under the kept UIDVALIDITY, else the same Message-ID, Date,
  Subject and size) is not stored again; its flags are set to the source's when they differ;
- with delete, what the mailbox holds that the folder does not is expunged;
- the POP3 UIDL the old server announced goes with each message, UIDs kept or not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc

from mailstack.message import mime
from mailstack.message.line_endings import to_crlf
from mailstack.services.common.grpc_client import error_detail, error_message
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from .output import CommandError, Output, format_table

CALL_TIMEOUT = 60.0
IMPORT_TIMEOUT = 300.0  # one message, however big (the mailstore bounds the size)
LIST_TIMEOUT = 600.0  # a whole mailbox's metadata
APPEND_CHUNK = 1024 * 1024
RECENT = "\\Recent"  # a session flag (RFC 3501 §2.3.2): never imported, never compared


class ImportStubs(NamedTuple):
    """The two services an import calls: Admin for the kept UIDs, Mailstore as a client would."""

    store: pbg.MailstoreStub
    admin: pbg.AdminStub


def import_stubs(channel: Any) -> ImportStubs:
    return ImportStubs(pbg.MailstoreStub(channel), pbg.AdminStub(channel))


@dataclass(slots=True)
class SourceMessage:
    uid: int  # 0: the source gives it none
    flags: tuple[str, ...]
    internal_date: int  # unix seconds
    tz_offset: int  # minutes east of UTC
    size: int  # with CRLF line ends; 0 = known once read
    pop3_uidl: str  # "" = none to keep
    name: str  # for the report: a file name, or "UID n"
    read: Callable[[], bytes]  # the whole message
    read_header: Callable[[], bytes]  # its header (to match it when there are no UIDs)


@dataclass(slots=True)
class SourceFolder:
    mailbox: str
    uidvalidity: int  # 0: no UIDs to keep
    uidnext: int
    messages: list[SourceMessage]
    note: str = ""  # why there are no UIDs to keep


@dataclass(slots=True)
class FolderReport:
    mailbox: str
    uids: str = "new"  # "kept": the source's UIDVALIDITY and UIDs
    imported: int = 0
    flags: int = 0  # messages whose flags were set to the source's
    deleted: int = 0
    unchanged: int = 0
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Stored:
    uid: int
    flags: frozenset[str]
    key: tuple[bytes, bytes, bytes, int]


MatchKey = tuple[bytes, bytes, bytes, int]


def match_key(header: bytes, size: int) -> MatchKey:
    """Message-ID, Date and Subject as the mailstore parses them, and the size with CRLF line ends:
    a message without UIDs is the same message when these are."""
    envelope = mime.parse_message(to_crlf(header)).envelope
    return envelope.message_id, envelope.date, envelope.subject, size


class Importer:
    """One account's passes: folder by folder, each into its mailbox."""

    def __init__(self, stubs: ImportStubs, account: str, delete: bool) -> None:
        self.store, self.admin = stubs
        self.account = account
        self.delete = delete

    def _mailbox(self, name: str, uidvalidity: int, uidnext: int) -> pb.MailboxStatus:
        request = pb.ImportMailboxRequest(account=self.account, name=name, uidvalidity=uidvalidity, uidnext=uidnext)
        return self.admin.ImportMailbox(request, timeout=CALL_TIMEOUT)

    def _prepare(self, folder: SourceFolder, report: FolderReport) -> pb.MailboxStatus:
        """The mailbox, with the folder's UIDVALIDITY when it can take it."""
        if not folder.uidvalidity:
            report.notes.append(folder.note or "no UID list: new UIDs")
            return self._mailbox(folder.mailbox, 0, 0)
        try:
            status = self._mailbox(folder.mailbox, folder.uidvalidity, 0)
        except grpc.RpcError as err:
            detail = error_detail(err)
            if detail is None or detail.reason != pb.NOT_ALLOWED:
                raise
            status = self._mailbox(folder.mailbox, 0, 0)
            report.notes.append(
                f"UIDs not kept: the mailbox held other mail under UIDVALIDITY {status.uidvalidity}"
                + (" (its own, equal to the folder's by chance)" if status.uidvalidity == folder.uidvalidity else "")
                + ": new UIDs"
            )
            return status
        report.uids = "kept"
        return status

    def _stored(self, mailbox: str) -> dict[int, _Stored]:
        request = pb.FetchMetadataRequest(
            account=self.account, mailbox=mailbox, fields=pb.MetadataFields(flags=True, size=True, envelope=True)
        )
        out: dict[int, _Stored] = {}
        for reply in self.store.FetchMetadata(request, timeout=LIST_TIMEOUT):
            for m in reply.messages:
                key = (m.envelope.message_id, m.envelope.date, m.envelope.subject, m.size)
                out[m.uid] = _Stored(m.uid, frozenset(m.flags) - {RECENT}, key)
        return out

    def sync(self, folder: SourceFolder) -> FolderReport:
        report = FolderReport(folder.mailbox)
        try:
            status = self._prepare(folder, report)
            self._sync(folder, status, report)
        except grpc.RpcError as err:
            detail = error_detail(err)
            if err.code() == grpc.StatusCode.UNAVAILABLE and detail is None:
                raise
            if detail is not None and detail.reason == pb.ACCOUNT_NOT_FOUND:
                raise CommandError(f"no account {self.account}: create it first (mailstack user add)") from None
            report.failed.append(f"mailbox: {error_message(err)}")
        return report

    def _sync(self, folder: SourceFolder, status: pb.MailboxStatus, report: FolderReport) -> None:
        kept = report.uids == "kept"
        stored = self._stored(folder.mailbox)
        pairs, missing = _match(folder.messages, stored, kept, report)
        self._update_flags(folder.mailbox, pairs, stored, report)
        uidnext = status.uidnext
        # Kept UIDs first and in ascending order (each must be above every UID given out), then
        # UIDNEXT raised to the source's, then the messages without a UID to keep.
        with_uid = sorted((m for m in missing if kept and m.uid >= uidnext), key=lambda m: m.uid)
        for message in with_uid:
            self._store(folder.mailbox, message, message.uid, report)
        if kept and folder.uidnext > uidnext:
            self._mailbox(folder.mailbox, folder.uidvalidity, folder.uidnext)
        others = [m for m in missing if not (kept and m.uid >= uidnext)]
        if kept and any(m.uid for m in others):
            report.notes.append(f"{sum(1 for m in others if m.uid)} messages below UIDNEXT {uidnext}: new UIDs")
        for message in others:
            self._store(folder.mailbox, message, 0, report)
        gone = sorted(set(stored) - {uid for uid, _ in pairs})
        if self.delete and gone:
            self._expunge(folder.mailbox, gone, report)

    def _update_flags(
        self, mailbox: str, pairs: list[tuple[int, SourceMessage]], stored: dict[int, _Stored], report: FolderReport
    ) -> None:
        by_flags: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for uid, message in pairs:
            wanted = frozenset(message.flags) - {RECENT}
            if wanted == stored[uid].flags:
                report.unchanged += 1
            else:
                by_flags[tuple(sorted(wanted))].append(uid)
        for flags, uids in by_flags.items():
            request = pb.StoreFlagsRequest(
                account=self.account, mailbox=mailbox, uids=uid_set(uids), mode=pb.STORE_REPLACE, flags=flags
            )
            try:
                self.store.StoreFlags(request, timeout=CALL_TIMEOUT)
                report.flags += len(uids)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE and error_detail(err) is None:
                    raise
                report.failed.append(f"flags of {len(uids)} messages: {error_message(err)}")

    def _expunge(self, mailbox: str, uids: list[int], report: FolderReport) -> None:
        selected = uid_set(uids)
        self.store.StoreFlags(
            pb.StoreFlagsRequest(
                account=self.account, mailbox=mailbox, uids=selected, mode=pb.STORE_ADD, flags=["\\Deleted"]
            ),
            timeout=CALL_TIMEOUT,
        )
        reply = self.store.Expunge(
            pb.ExpungeRequest(account=self.account, mailbox=mailbox, uids=selected), timeout=CALL_TIMEOUT
        )
        report.deleted += len(reply.expunged)

    def _store(self, mailbox: str, message: SourceMessage, uid: int, report: FolderReport) -> None:
        try:
            data = message.read()
            requests = _import_requests(self.account, mailbox, message, uid, data)
            self.admin.ImportMessage(requests, timeout=IMPORT_TIMEOUT)
            report.imported += 1
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE and error_detail(err) is None:
                raise
            report.failed.append(f"{message.name}: {error_message(err)}")
        except OSError as err:  # the file went away, or the source's connection failed
            report.failed.append(f"{message.name}: {err}")

    def subscribe(self, names: list[str]) -> list[str]:
        """Subscribe the account to the source's names; the problems."""
        problems = []
        for name in names:
            try:
                request = pb.SubscribeRequest(account=self.account, name=name, subscribed=True)
                self.store.Subscribe(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE and error_detail(err) is None:
                    raise
                problems.append(f"subscription {name}: {error_message(err)}")
        return problems


def _match(
    messages: list[SourceMessage], stored: dict[int, _Stored], kept: bool, report: FolderReport
) -> tuple[list[tuple[int, SourceMessage]], list[SourceMessage]]:
    """(stored UID, source message) pairs already there, and the source messages missing."""
    pairs: list[tuple[int, SourceMessage]] = []
    rest: list[SourceMessage] = []
    for message in messages:
        row = stored.get(message.uid) if kept and message.uid else None
        if row is not None and _same(message, row):
            pairs.append((message.uid, message))
        else:
            rest.append(message)
    paired = {uid for uid, _ in pairs}
    by_key: dict[MatchKey, list[int]] = defaultdict(list)
    for uid, row in stored.items():
        if uid not in paired:
            by_key[row.key].append(uid)
    if not by_key:  # nothing left to match against (a first pass): no header read
        return pairs, rest
    missing: list[SourceMessage] = []
    for message in rest:
        try:
            candidates = by_key.get(match_key(message.read_header(), message.size or len(to_crlf(message.read()))))
        except OSError as err:
            report.failed.append(f"{message.name}: {err}")
            continue
        if candidates:
            pairs.append((candidates.pop(0), message))
        else:
            missing.append(message)
    return pairs, missing


def _same(message: SourceMessage, row: _Stored) -> bool:
    """Whether the message stored under the source message's UID is that message (not a file
    stored under a new UID on an earlier pass, whose number the old server has since given to
    another message). The same size says so; another size or none known is looked at closer:
    the same Message-ID, Date and Subject make it the same (a size the old server counts
    otherwise, e.g. a bare CR)."""
    if message.size and row.key[3] == message.size:
        return True
    try:
        return match_key(message.read_header(), 0)[:3] == row.key[:3]
    except OSError:
        return True  # unreadable now: the next pass looks again; never stored twice for it


def _import_requests(
    account: str, mailbox: str, message: SourceMessage, uid: int, data: bytes
) -> Iterator[pb.AppendRequest]:
    header = pb.AppendHeader(
        account=account,
        mailbox=mailbox,
        flags=[f for f in message.flags if f != RECENT],
        size=len(data),
        uid=uid,
        pop3_uidl=message.pop3_uidl,
    )
    header.internal_date.unix_seconds = message.internal_date
    header.internal_date.utc_offset_minutes = message.tz_offset
    yield pb.AppendRequest(header=header)
    for start in range(0, len(data), APPEND_CHUNK):
        yield pb.AppendRequest(chunk=data[start : start + APPEND_CHUNK])


def uid_set(uids: list[int]) -> pb.UidSet:
    ranges: list[list[int]] = []
    for uid in sorted(uids):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return pb.UidSet(ranges=[pb.UidRange(first=a, last=b) for a, b in ranges])


def emit_report(out: Output, reports: list[FolderReport], problems: list[str]) -> None:
    """The per-folder table (or JSON); CommandError (exit 1) when anything failed."""
    rows = [[r.mailbox, r.uids, r.imported, r.flags, r.deleted, r.unchanged, len(r.failed)] for r in reports]
    table = format_table(["MAILBOX", "UIDS", "IMPORTED", "FLAGS SET", "DELETED", "UNCHANGED", "FAILED"], rows)
    notes = "".join(f"\n  {r.mailbox}: {n}" for r in reports for n in [*r.notes, *r.failed])
    notes += "".join(f"\n  {p}" for p in problems)
    data = [
        {
            "mailbox": r.mailbox, "uids": r.uids, "imported": r.imported, "flags": r.flags, "deleted": r.deleted,
            "unchanged": r.unchanged, "failed": r.failed, "notes": r.notes,
        }
        for r in reports
    ]  # fmt: skip
    out.emit(data, table + notes)
    failed = sum(len(r.failed) for r in reports) + len(problems)
    if failed:
        raise CommandError(f"{failed} failures (listed above); run again to retry them")
