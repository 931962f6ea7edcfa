"""FETCH and UID FETCH (RFC 3501 §6.4.5, RFC 9051 §6.4.5; MODSEQ and CHANGEDSINCE RFC 7162 §3.1.4).

Each response goes out as buffers (protocol/encoder.fetch_buffers): a body is handed to the
connection as the mailstore sent it, never copied into the response."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from mailstack.message.body_parts import SectionNotFound, find_part
from mailstack.message.preview import preview
from mailstack.message.transfer_encoding import UnknownCte, decode_cte
from mailstack.v1 import mailstore_pb2 as pb

from ..mailstore import LONG, MetadataWanted
from ..protocol import Command, Fetch, FetchAttribute, FetchBinarySize, FetchBody, FetchItem, FetchPreview, Section
from ..protocol.encoder import Buffer, FetchValue, Literal, fetch_buffers, flag_list, nstring
from ..protocol.message_data import body_structure, envelope, internal_date
from ..replies import Reply, bad, no
from ..search_keys import EMAILID_PREFIX
from .common import report_vanished, resolve, selected_view

if TYPE_CHECKING:
    from ..mailbox_view import MailboxView
    from ..session import Session

BATCH = 100  # messages whose data is gathered (bodies concurrently) before they are written
# Read-ahead for clients that download one message after another (mbsync, fetchmail, getmail,
# offline sync): one FetchBodies call for the next messages instead of a call per FETCH.
READ_AHEAD_BYTES = 1024 * 1024  # per session, from the process's imap_read_ahead_bytes
READ_AHEAD_MESSAGES = 32
# RFC822* are BODY[] forms with their own response names (RFC 3501 §6.4.5)
_RFC822 = {
    "RFC822": (FetchBody(Section()), b"RFC822"),
    "RFC822.HEADER": (FetchBody(Section(text="HEADER"), peek=True), b"RFC822.HEADER"),
    "RFC822.TEXT": (FetchBody(Section(text="TEXT")), b"RFC822.TEXT"),
}
PREVIEW_LAZY_BYTES = 64 * 1024  # PREVIEW (LAZY) reads no more of a message than this
Decoded: TypeAlias = FetchBody | FetchBinarySize | FetchPreview  # items whose value is computed
Texts = dict[tuple[int, int], bytes]  # (uid, body section index) -> bytes
Metadata = dict[int, pb.MessageMetadata]


def _body_item(item: FetchItem) -> tuple[FetchBody, bytes] | None:
    """The section to fetch for an item, and the item's name in the response. BINARY items fetch
    their part as stored (decoded afterwards: a partial applies to the decoded bytes)."""
    if isinstance(item, FetchBody) and item.binary:
        # RFC 3516 §4.3, RFC 9051 §7.5.2: "BINARY[<section-binary>]<<number>>", the origin kept
        return FetchBody(Section(item.section.part), peek=item.peek), item.label()
    if isinstance(item, FetchBinarySize):
        return FetchBody(Section(item.part), peek=True), item.label()
    if isinstance(item, FetchPreview):
        # RFC 8970 §3: computed from the stored message (never sets \Seen); LAZY reads only its start
        return FetchBody(Section(), (0, PREVIEW_LAZY_BYTES) if item.lazy else None, peek=True), item.label()
    if isinstance(item, FetchBody):
        return item, item.label()
    if isinstance(item, FetchAttribute) and item.name in _RFC822:
        return _RFC822[item.name]
    return None


def _decoded_value(item: Decoded, raw: bytes, structure: pb.BodyPart, utf8: bool) -> FetchValue:
    """The value of an item computed from stored octets: PREVIEW, or a BINARY item."""
    if isinstance(item, FetchPreview):
        # RFC 8970 §3.1: NIL only under LAZY, when the text part lies beyond the octets read
        return nstring(preview(raw, structure), utf8)
    return _binary_value(item, raw, structure)


def _binary_value(item: FetchBody | FetchBinarySize, raw: bytes, structure: pb.BodyPart) -> FetchValue:
    """BINARY[part]<partial> or BINARY.SIZE[part] (RFC 3516 §4.2) from the part's stored bytes.
    BINARY[] of a message that is not multipart decodes its body and keeps its header; a multipart
    message has no encoding of its own, so BINARY[] is the message as stored."""
    part = item.section.part if isinstance(item, FetchBody) else item.part
    if part:
        try:
            encoding = find_part(structure, part).encoding
        except SectionNotFound:
            encoding = b""  # the section is empty then
        content = raw
    else:
        encoding = b"" if structure.type.lower() == b"multipart" else structure.encoding
        content = raw[structure.body_offset :]  # the body as the stored structure delimits it
    try:
        data = decode_cte(content, encoding)
    except UnknownCte as e:
        raise no(f"unknown Content-Transfer-Encoding {e}", "UNKNOWN-CTE") from None
    if not part:
        data = raw[: len(raw) - len(content)] + data  # the header as stored
    if isinstance(item, FetchBinarySize):
        return b"%d" % len(data)
    if item.partial is not None:
        start, count = item.partial
        data = data[start : start + count]
    # RFC 3516 §4.3: literal8 only when the data holds a NUL
    return Literal(data, binary=b"\x00" in data)


def _text_literal(raw: bytes) -> Literal:
    """BODY[...] data: a literal cannot hold NUL (RFC 3501 §4.3), so binary content stored from a
    literal8 shows each NUL as 0x80 there, as Dovecot does; the size stays, BINARY has the NULs."""
    return Literal(raw.replace(b"\x00", b"\x80") if b"\x00" in raw else raw)


def _wanted(items: list[FetchItem]) -> MetadataWanted:
    names = {i.name for i in items if isinstance(i, FetchAttribute)}
    return MetadataWanted(
        flags="FLAGS" in names,
        internal_date="INTERNALDATE" in names,
        size="RFC822.SIZE" in names,
        envelope="ENVELOPE" in names,
        body_structure=bool(names & {"BODY", "BODYSTRUCTURE"}),
        save_date="SAVEDATE" in names,
        blob_key="EMAILID" in names,
    )


@dataclass
class _Plan:
    """What each item answers, worked out once for all the messages: rows of (name in the
    response, index of its body section or -1, the BINARY item to decode or None, the attribute
    name or ""), the body sections to read, and the metadata fields to read."""

    rows: list[tuple[bytes, int, Decoded | None, str]] = field(default_factory=list)
    bodies: list[FetchBody] = field(default_factory=list)
    sets_seen: bool = False  # RFC 3501 §6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \Seen
    wanted: MetadataWanted = field(default_factory=MetadataWanted)
    need_metadata: bool = True
    names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, items: list[FetchItem], changed_since: int | None) -> _Plan:
        plan = cls(names=frozenset(i.name for i in items if isinstance(i, FetchAttribute)))
        for item in items:
            body = _body_item(item)
            if body is None:
                assert isinstance(item, FetchAttribute)
                plan.rows.append((item.name.encode("ascii"), -1, None, item.name))
                continue
            binary = isinstance(item, FetchBinarySize | FetchPreview) or (isinstance(item, FetchBody) and item.binary)
            plan.rows.append((body[1], len(plan.bodies), item if binary else None, ""))  # type: ignore[arg-type]
            plan.bodies.append(body[0])
            plan.sets_seen = plan.sets_seen or not body[0].peek
        wanted = _wanted(items)
        if any(decoded is not None for _, _, decoded, _ in plan.rows):
            wanted = dataclasses.replace(wanted, body_structure=True)  # each part's Content-Transfer-Encoding
        plan.wanted = wanted
        # Only bodies and UID: what FetchBodies returns says which messages exist; no metadata read.
        plan.need_metadata = not plan.bodies or "MODSEQ" in plan.names or changed_since is not None or wanted.any()
        return plan


def _whole(item: FetchBody) -> bool:
    return not item.section.part and item.section.text is None and item.partial is None and not item.binary


async def _bodies_ahead(
    session: Session, view: MailboxView, uids: list[int], items: list[FetchBody], missing: set[int] | None = None
) -> Texts:
    """The bodies, but a lone whole body (BODY[], BODY.PEEK[], RFC822 of one message) comes from the
    read-ahead: started when the message follows the previous lone one in the mailbox, so a client
    that downloads message after message makes one FetchBodies call per batch, not per message.
    A body never changes under its UID, so what was fetched ahead stays right."""
    if len(uids) != 1 or len(items) != 1 or not _whole(items[0]):
        return await session.mailstore.bodies(view.name, uids, items, missing=missing)
    uid = uids[0]
    previous, session.last_body_uid = session.last_body_uid, uid
    if uid not in session.ahead and previous and _follows(view, previous, uid):
        _read_ahead(session, view, uid)
    data = await session.ahead.take(uid)
    if data is not None:
        return {(uid, 0): data}
    return await session.mailstore.bodies(view.name, uids, items, missing=missing)


def _follows(view: MailboxView, previous: int, uid: int) -> bool:
    seq = view.seq_of(uid)
    return seq is not None and seq > 1 and view.uids[seq - 2] == previous


def _read_ahead(session: Session, view: MailboxView, uid: int) -> None:
    budget = session.services.read_ahead
    session.ahead.drop()
    granted = budget.take(READ_AHEAD_BYTES)
    if not granted:
        return  # the process's budget is spent: one call per message, as without read-ahead
    seq = view.seq_of(uid)
    assert seq is not None
    uids = view.uids[seq - 1 : seq - 1 + READ_AHEAD_MESSAGES]
    items = session.mailstore.whole_bodies(view.name, uids, granted)
    session.ahead.start(uids, granted, items)


async def _read_batch(
    session: Session, view: MailboxView, plan: _Plan, changed_since: int | None, uids: list[int], missing: set[int]
) -> tuple[Metadata, Texts]:
    """The metadata and body sections of one batch, in as few calls as the items allow."""
    store = session.mailstore
    if not plan.need_metadata:
        texts = await _bodies_ahead(session, view, uids, plan.bodies, missing)
        return {uid: pb.MessageMetadata(uid=uid) for uid, _ in texts}, texts
    if not plan.bodies:
        return await store.metadata(view.name, uids, plan.wanted, changed_since or 0), {}
    if not changed_since:  # bodies and metadata in one FetchBodies call
        metadata: Metadata = {}
        texts = await store.bodies(view.name, uids, plan.bodies, wanted=plan.wanted, metadata=metadata, missing=missing)
        return metadata, texts
    # CHANGEDSINCE filters by the metadata: it decides which are sent
    return await asyncio.gather(
        store.metadata(view.name, uids, plan.wanted, changed_since),
        store.bodies(view.name, uids, plan.bodies, missing=missing),
    )


def _items(session: Session, command: Command, args: Fetch) -> list[FetchItem]:
    """The items asked for, with UID for UID FETCH (RFC 9051 §6.4.9) and MODSEQ under CONDSTORE."""
    items = list(args.items)
    names = {i.name for i in items if isinstance(i, FetchAttribute)}
    if command.uid and "UID" not in names:
        items.insert(0, FetchAttribute("UID"))
    if args.changed_since is not None or "MODSEQ" in names:
        session.enable_condstore()  # RFC 7162 §3.1: CONDSTORE-enabling
        if "MODSEQ" not in names:
            items.append(FetchAttribute("MODSEQ"))
    return items


async def _mark_seen(session: Session, view: MailboxView, targets: list[tuple[int, int]]) -> set[int]:
    """Set \\Seen on the targets that lack it; the UIDs that got it."""
    unseen = [uid for _, uid in targets if "\\Seen" not in view.flags.get(uid, ())]
    if not unseen:
        return set()
    reply = await session.mailstore.store_flags(view.name, unseen, "+", ["\\Seen"], deadline=LONG)
    for m in reply.updated:
        view.set_flags(m.uid, m.flags, m.modseq)
    return {m.uid for m in reply.updated}


async def fetch(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.4.5 / §6.4.9 (UID FETCH always returns UID)
    view = selected_view(session.view)
    args = command.args
    assert isinstance(args, Fetch)
    items = _items(session, command, args)
    if args.vanished:  # RFC 7162 §3.2.6: UID FETCH (CHANGEDSINCE m VANISHED)
        if not session.qresync:
            raise bad("VANISHED needs ENABLE QRESYNC")
        assert args.changed_since is not None  # the parser requires it
        await report_vanished(session, view, args.changed_since, args.sequence_set)
    targets = resolve(view, command, args.sequence_set)
    if not targets:
        return None
    plan = _Plan.of(items, args.changed_since)
    if plan.names <= _VIEW_ITEMS and not plan.bodies and await session.refresh():
        await _from_view(session, view, plan, targets, args.changed_since)
        return None
    newly_seen = await _mark_seen(session, view, targets) if plan.sets_seen and not view.readonly else set()
    missing: set[int] = set()  # UIDs whose body is gone from the store (broken messages)
    for start in range(0, len(targets), BATCH):
        batch = targets[start : start + BATCH]
        metadata, texts = await _read_batch(session, view, plan, args.changed_since, [u for _, u in batch], missing)
        for seq, uid in batch:
            if uid in metadata and uid not in missing:
                session.untagged_buffers(_response(session, plan, seq, uid, metadata[uid], texts, uid in newly_seen))
        await session.flush()
    if missing:
        # RFC 9051 §7.1 SERVERBUG: the other messages were sent; these cannot be, and a client
        # must not take them for empty. (Dovecot's imap_fetch_failure = no-after does the same.)
        uids = ",".join(str(u) for u in sorted(missing)[:20])
        raise no(f"some messages could not be read (UID {uids}); the others were sent", "SERVERBUG")
    return None


# What the session's view holds once caught up from the change log: FLAGS, UID, MODSEQ.
_VIEW_ITEMS = frozenset({"UID", "FLAGS", "MODSEQ"})
_VIEW_VALUES: dict[str, Callable[[MailboxView, int], bytes]] = {
    "UID": lambda v, uid: b"%d" % uid,
    "FLAGS": lambda v, uid: flag_list(sorted(v.flags_of(uid))),
    "MODSEQ": lambda v, uid: b"(%d)" % v.modseqs.get(uid, 0),
}


async def _from_view(
    session: Session, view: MailboxView, plan: _Plan, targets: list[tuple[int, int]], changed_since: int | None
) -> None:
    """FETCH of only FLAGS, UID and MODSEQ answered from the view just caught up from the change log
    (one GetChanges, as NOOP makes, rather than listing the messages): what another session or
    frontend stored before this command shows (RFC 9051 §7.5.1). The targets were resolved before
    the catch-up, so messages it found get no sequence number here: EXISTS after the command
    announces them. Messages expunged meanwhile are left out, as a listing would leave them out."""
    if plan.wanted.flags:
        session.untagged_buffers([*view.keyword_updates()])  # RFC 3501 §7.2.6: before a FETCH shows it
    for start in range(0, len(targets), BATCH):
        for seq, uid in targets[start : start + BATCH]:
            if uid not in view.flags or view.is_expunged(uid):
                continue
            if changed_since is not None and view.modseqs.get(uid, 0) <= changed_since:
                continue  # RFC 7162 §3.1.4.1
            if plan.wanted.flags:
                view.flags_told(uid)  # this response tells them: no untagged FETCH for them after
            values = [(label, _VIEW_VALUES[attribute](view, uid)) for label, _, _, attribute in plan.rows]
            session.untagged_buffers(fetch_buffers(seq, values))
        await session.flush()
        await asyncio.sleep(0)  # a large mailbox: other sessions run between batches (flush may not wait)


def _response(
    session: Session, plan: _Plan, seq: int, uid: int, m: pb.MessageMetadata, texts: Texts, newly_seen: bool
) -> list[Buffer]:
    view = session.view
    assert view is not None
    announce: list[Buffer] = []
    if plan.wanted.flags:
        view.set_flags(uid, m.flags, m.modseq)
        announce += view.keyword_updates()  # RFC 3501 §7.2.6: another session's new keyword
    out: list[tuple[bytes, FetchValue]] = []
    for label, index, binary_item, attribute in plan.rows:
        if index < 0:
            out.append((label, _attribute(session, attribute, seq, uid, m)))
            continue
        raw = texts.get((uid, index), b"")
        value = (
            _text_literal(raw)
            if binary_item is None
            else _decoded_value(binary_item, raw, m.body_structure, session.utf8)
        )
        out.append((label, value))
    if newly_seen and "FLAGS" not in plan.names:
        out.append((b"FLAGS", flag_list(sorted(view.flags_of(uid)))))
    if newly_seen and session.condstore:  # RFC 7162 §3.1: a FETCH that set \Seen tells UID and MODSEQ
        out += [(b"UID", b"%d" % uid)] if "UID" not in plan.names else []
        out += [(b"MODSEQ", b"(%d)" % view.modseqs.get(uid, 0))] if "MODSEQ" not in plan.names else []
    # Fixed-size items first, body literals last, in the asked order within each (as Dovecot:
    # clients and tools that read FLAGS or UID after a literal miss them otherwise)
    out.sort(key=lambda item: isinstance(item[1], Literal))
    return announce + fetch_buffers(seq, out)


# The items without a body section, by name: (session, uid, metadata) -> the value in the response.
_ATTRIBUTES: dict[str, Callable[[Session, int, pb.MessageMetadata], bytes]] = {
    "UID": lambda s, uid, m: b"%d" % uid,
    "FLAGS": lambda s, uid, m: flag_list(sorted(selected_view(s.view).flags_of(uid))),
    "INTERNALDATE": lambda s, uid, m: internal_date(m.internal_date),
    "RFC822.SIZE": lambda s, uid, m: b"%d" % m.size,
    "ENVELOPE": lambda s, uid, m: envelope(m.envelope, s.utf8),
    "BODYSTRUCTURE": lambda s, uid, m: body_structure(m.body_structure, extensible=True, utf8=s.utf8),
    "BODY": lambda s, uid, m: body_structure(m.body_structure, extensible=False, utf8=s.utf8),
    "MODSEQ": lambda s, uid, m: b"(%d)" % m.modseq,
    # RFC 8514 §3: every message here has a save date (ADR 0024)
    "SAVEDATE": lambda s, uid, m: internal_date(m.save_date),
    # RFC 8474 §5.1: the body's identity, shared by its copies; §5.2: no threads are kept, THREADID NIL
    "EMAILID": lambda s, uid, m: b"(" + (EMAILID_PREFIX + m.blob_key).encode("ascii") + b")",
    "THREADID": lambda s, uid, m: b"NIL",
}


def _attribute(session: Session, name: str, seq: int, uid: int, m: pb.MessageMetadata) -> bytes:
    value = _ATTRIBUTES.get(name)
    if value is None:
        raise no(f"unknown item {name}")
    return value(session, uid, m)
