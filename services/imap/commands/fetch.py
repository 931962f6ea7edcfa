"""FETCH and UID FETCH (RFC 3501 §6.4.5, RFC 9051 §6.4.5; MODSEQ and CHANGEDSINCE RFC 7162 §3.1.4)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mailstack.message.body_parts import SectionNotFound, find_part
from mailstack.message.transfer_encoding import UnknownCte, decode_cte
from mailstack.services.common.grpc_client import collect_bodies, stream_whole_bodies
from mailstack.v1 import mailstore_pb2 as pb

from ..errors import bad, no
from ..protocol import Command, Fetch, FetchAttribute, FetchBinarySize, FetchBody, FetchItem, Section
from ..protocol.encoder import fetch_response, flag_list, literal, literal8
from ..protocol.message_data import body_structure, envelope, internal_date
from .common import report_vanished, resolve, selected_view, uid_set

if TYPE_CHECKING:
    from ..mailbox_view import MailboxView
    from ..session import Reply, Session

CALL_TIMEOUT = 120.0
BATCH = 100  # messages whose data is gathered (bodies concurrently) before they are written
# Read-ahead for clients that download one message after another (mbsync, fetchmail, getmail,
# offline sync): one FetchBodies call for the next messages instead of a call per FETCH.
READ_AHEAD_BYTES = 1024 * 1024  # per session, from the process's imap_read_ahead_bytes
READ_AHEAD_MESSAGES = 32
_TEXTS = {
    None: pb.SECTION_ALL,
    "HEADER": pb.SECTION_HEADER,
    "HEADER.FIELDS": pb.SECTION_HEADER_FIELDS,
    "HEADER.FIELDS.NOT": pb.SECTION_HEADER_FIELDS_NOT,
    "TEXT": pb.SECTION_TEXT,
    "MIME": pb.SECTION_MIME,
}
# RFC822* are BODY[] forms with their own response names (RFC 3501 §6.4.5)
_RFC822 = {
    "RFC822": (FetchBody(Section()), b"RFC822"),
    "RFC822.HEADER": (FetchBody(Section(text="HEADER"), peek=True), b"RFC822.HEADER"),
    "RFC822.TEXT": (FetchBody(Section(text="TEXT")), b"RFC822.TEXT"),
}


def _body_item(item: FetchItem) -> tuple[FetchBody, bytes] | None:
    """The section to fetch for an item, and the item's name in the response. BINARY items fetch
    their part as stored (decoded afterwards: a partial applies to the decoded bytes)."""
    if isinstance(item, FetchBody) and item.binary:
        # RFC 9051 §7.5.2 (ABNF): a BINARY response carries no <origin>
        return FetchBody(Section(item.section.part), peek=item.peek), b"BINARY[" + bytes(item.section) + b"]"
    if isinstance(item, FetchBinarySize):
        return FetchBody(Section(item.part), peek=True), item.label()
    if isinstance(item, FetchBody):
        return item, item.label()
    if isinstance(item, FetchAttribute) and item.name in _RFC822:
        return _RFC822[item.name]
    return None


def _binary_value(item: FetchBody | FetchBinarySize, raw: bytes, structure: pb.BodyPart) -> bytes:
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
    return literal8(data) if b"\x00" in data else literal(data)


def _fields_list(fields: pb.MetadataFields) -> list[bool]:
    return [fields.flags, fields.internal_date, fields.size, fields.envelope, fields.body_structure]


def _fields(items: list[FetchItem]) -> pb.MetadataFields:
    names = {i.name for i in items if isinstance(i, FetchAttribute)}
    return pb.MetadataFields(
        flags="FLAGS" in names,
        internal_date="INTERNALDATE" in names,
        size="RFC822.SIZE" in names,
        envelope="ENVELOPE" in names,
        body_structure=bool(names & {"BODY", "BODYSTRUCTURE"}),
    )


def _body_section(item: FetchBody) -> pb.BodySection:
    section = item.section
    out = pb.BodySection(section=pb.Section(part=section.part, text=_TEXTS[section.text], fields=section.fields))
    if item.partial is not None:
        out.has_partial = True
        out.offset, out.length = item.partial
    return out


async def _bodies(
    session: Session,
    mailbox: str,
    uids: list[int],
    items: list[FetchBody],
    metadata: tuple[pb.MetadataFields, dict[int, pb.MessageMetadata]] | None = None,
    missing: set[int] | None = None,
) -> dict[tuple[int, int], bytes]:
    """Every body section of every message in one FetchBodies call: {(uid, item index): bytes};
    messages gone from the store are absent, those whose body is missing (a broken message) are
    put in `missing`. With `metadata` (fields, out), each message's metadata comes in the same
    call, into `out`."""
    request = pb.FetchBodiesRequest(
        account=session.account, mailbox=mailbox, uids=uid_set(uids), sections=[_body_section(i) for i in items]
    )
    if metadata is None:
        return await collect_bodies(session.stub, request, CALL_TIMEOUT, missing=missing)
    request.metadata.CopyFrom(metadata[0])
    return await collect_bodies(session.stub, request, CALL_TIMEOUT, metadata=metadata[1], missing=missing)


async def _bodies_with_metadata(
    session: Session,
    view: MailboxView,
    request: pb.FetchMetadataRequest,
    uids: list[int],
    items: list[FetchBody],
    missing: set[int] | None = None,
) -> tuple[dict[int, pb.MessageMetadata], dict[tuple[int, int], bytes]]:
    """Bodies and metadata in one FetchBodies call. A mailstore older than
    FetchBodiesRequest.metadata sends none: then FetchMetadata is asked as well."""
    metadata: dict[int, pb.MessageMetadata] = {}
    texts = await _bodies(session, view.name, uids, items, (request.fields, metadata), missing)
    if texts and not metadata:
        metadata = await _metadata(session, request)
    return metadata, texts


def _whole(item: FetchBody) -> bool:
    return not item.section.part and item.section.text is None and item.partial is None and not item.binary


async def _bodies_ahead(
    session: Session, view: MailboxView, uids: list[int], items: list[FetchBody], missing: set[int] | None = None
) -> dict[tuple[int, int], bytes]:
    """_bodies, but a lone whole body (BODY[], BODY.PEEK[], RFC822 of one message) comes from the
    read-ahead: started when the message follows the previous lone one in the mailbox, so a client
    that downloads message after message makes one FetchBodies call per batch, not per message.
    A body never changes under its UID, so what was fetched ahead stays right."""
    if len(uids) != 1 or len(items) != 1 or not _whole(items[0]):
        return await _bodies(session, view.name, uids, items, missing=missing)
    uid = uids[0]
    previous, session.last_body_uid = session.last_body_uid, uid
    if uid not in session.ahead and previous and _follows(view, previous, uid):
        _read_ahead(session, view, uid)
    data = await session.ahead.take(uid)
    if data is not None:
        return {(uid, 0): data}
    return await _bodies(session, view.name, uids, items, missing=missing)


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
    items = stream_whole_bodies(session.stub, session.account, view.name, uid_set(uids), CALL_TIMEOUT, granted)
    session.ahead.start(uids, granted, items)


async def _metadata(session: Session, request: pb.FetchMetadataRequest) -> dict[int, pb.MessageMetadata]:
    metadata: dict[int, pb.MessageMetadata] = {}
    async for part in session.stub.FetchMetadata(request, timeout=CALL_TIMEOUT):
        for m in part.messages:
            metadata[m.uid] = m
    return metadata


async def fetch(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.4.5 / §6.4.9 (UID FETCH always returns UID)
    view = selected_view(session.view)
    args = command.args
    assert isinstance(args, Fetch)
    items = list(args.items)
    names = {i.name for i in items if isinstance(i, FetchAttribute)}
    if command.uid and "UID" not in names:
        items.insert(0, FetchAttribute("UID"))
    if args.changed_since is not None or "MODSEQ" in names:
        session.condstore = True  # RFC 7162 §3.1: CONDSTORE-enabling
        if "MODSEQ" not in names:
            items.append(FetchAttribute("MODSEQ"))
    if args.vanished:  # RFC 7162 §3.2.6: UID FETCH (CHANGEDSINCE m VANISHED)
        if not session.qresync:
            raise bad("VANISHED needs ENABLE QRESYNC")
        assert args.changed_since is not None  # the parser requires it
        await report_vanished(session, view, args.changed_since, args.sequence_set)
    targets = resolve(view, command, args.sequence_set)
    if not targets:
        return None
    # What each item answers, worked out once for all the messages: (name in the response, index
    # of its body section or -1, the BINARY item to decode or None, the attribute name or "").
    bodies: list[tuple[FetchBody, bytes]] = []
    plan: list[tuple[bytes, int, FetchBody | FetchBinarySize | None, str]] = []
    for item in items:
        body = _body_item(item)
        if body is None:
            assert isinstance(item, FetchAttribute)
            plan.append((item.name.encode("ascii"), -1, None, item.name))
            continue
        decoded = item if isinstance(item, FetchBinarySize) or (isinstance(item, FetchBody) and item.binary) else None
        plan.append((body[1], len(bodies), decoded, ""))
        bodies.append(body)

    # RFC 3501 §6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \Seen
    newly_seen: set[int] = set()
    if not view.readonly and any(not body.peek for body, _ in bodies):
        unseen = [uid for _, uid in targets if "\\Seen" not in view.flags.get(uid, ())]
        if unseen:
            reply = await session.stub.StoreFlags(
                pb.StoreFlagsRequest(
                    account=session.account,
                    mailbox=view.name,
                    uids=uid_set(unseen),
                    mode=pb.STORE_ADD,
                    flags=["\\Seen"],
                ),
                timeout=CALL_TIMEOUT,
            )
            for m in reply.updated:
                view.set_flags(m.uid, m.flags, m.modseq)
                newly_seen.add(m.uid)

    fields = _fields(items)
    if any(decoded is not None for _, _, decoded, _ in plan):
        fields.body_structure = True  # each part's Content-Transfer-Encoding
    # Only bodies and UID: what FetchBodies returns says which messages exist; no metadata read.
    modseq = any(isinstance(i, FetchAttribute) and i.name == "MODSEQ" for i in items)
    need_metadata = not bodies or modseq or args.changed_since is not None or any(_fields_list(fields))
    missing: set[int] = set()  # UIDs whose body is gone from the store (broken messages)
    for start in range(0, len(targets), BATCH):
        batch = targets[start : start + BATCH]
        batch_uids = [uid for _, uid in batch]
        request = pb.FetchMetadataRequest(
            account=session.account,
            mailbox=view.name,
            uids=uid_set(batch_uids),
            fields=fields,
            changed_since=args.changed_since or 0,
        )
        metadata: dict[int, pb.MessageMetadata] = {}
        texts: dict[tuple[int, int], bytes] = {}
        if need_metadata and bodies and not request.changed_since:
            metadata, texts = await _bodies_with_metadata(
                session, view, request, batch_uids, [b for b, _ in bodies], missing
            )
        elif need_metadata and bodies:  # CHANGEDSINCE filters by the metadata: it decides which are sent
            metadata, texts = await asyncio.gather(
                _metadata(session, request),
                _bodies(session, view.name, batch_uids, [b for b, _ in bodies], missing=missing),
            )
        elif need_metadata:
            metadata = await _metadata(session, request)
        else:
            texts = await _bodies_ahead(session, view, batch_uids, [b for b, _ in bodies], missing)
            metadata = {uid: pb.MessageMetadata(uid=uid) for uid, _ in texts}
        wanted = [(seq, uid) for seq, uid in batch if uid in metadata and uid not in missing]
        for seq, uid in wanted:
            m = metadata[uid]
            if fields.flags:
                view.set_flags(uid, m.flags, m.modseq)
            out: list[tuple[bytes, bytes]] = []
            for label, index, binary_item, attribute in plan:
                if index < 0:
                    out.append((label, _attribute(session, attribute, seq, uid, m)))
                    continue
                raw = texts.get((uid, index), b"")
                value = literal(raw) if binary_item is None else _binary_value(binary_item, raw, m.body_structure)
                out.append((label, value))
            if uid in newly_seen and "FLAGS" not in names:
                out.append((b"FLAGS", flag_list(sorted(view.flags_of(uid)))))
            session.untagged(fetch_response(seq, out))
        await session.flush()
    if missing:
        # RFC 9051 §7.1 SERVERBUG: the other messages were sent; these cannot be, and a client
        # must not take them for empty. (Dovecot's imap_fetch_failure = no-after does the same.)
        uids = ",".join(str(u) for u in sorted(missing)[:20])
        raise no(f"some messages could not be read (UID {uids}); the others were sent", "SERVERBUG")
    return None


def _attribute(session: Session, name: str, seq: int, uid: int, m: pb.MessageMetadata) -> bytes:
    view = session.view
    assert view is not None
    if name == "UID":
        return b"%d" % uid
    if name == "FLAGS":
        return flag_list(sorted(view.flags_of(uid)))
    if name == "INTERNALDATE":
        return internal_date(m.internal_date)
    if name == "RFC822.SIZE":
        return b"%d" % m.size
    if name == "ENVELOPE":
        return envelope(m.envelope, session.utf8)
    if name == "BODYSTRUCTURE":
        return body_structure(m.body_structure, extensible=True, utf8=session.utf8)
    if name == "BODY":
        return body_structure(m.body_structure, extensible=False, utf8=session.utf8)
    if name == "MODSEQ":
        return b"(%d)" % m.modseq
    raise no(f"unknown item {name}")


HANDLERS = {"FETCH": fetch}
