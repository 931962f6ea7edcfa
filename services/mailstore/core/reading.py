"""Reading stored messages: metadata listings, body sections (RFC 3501 §6.4.5) streamed from the
blob store, and SEARCH (RFC 3501 §6.4.4) evaluated in bounded slices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from mailstack.message import sections
from mailstack.message.structure import (
    SECTION_HEADER,
    SECTION_HEADER_FIELDS,
    SECTION_HEADER_FIELDS_NOT,
    BodyPart,
    Section,
)
from mailstack.services.mailstore import search
from mailstack.services.mailstore.core.errors import BlobNotFound, InvalidRequest, MailboxNotFound
from mailstack.services.mailstore.core.results import BodySlice, MailboxRecord, MessageRecord, UidRanges
from mailstack.services.mailstore.core.stores import Stores, log_missing
from mailstack.storage.blob.base import BlobStore
from mailstack.v1.mailstore_pb2 import SearchKey  # the API's own type, evaluated as it is (search.py)

BODY_CHUNK = 1024 * 1024
_HEADER_TEXTS = (SECTION_HEADER, SECTION_HEADER_FIELDS, SECTION_HEADER_FIELDS_NOT)
SEARCH_BODY_CONCURRENCY = 8
SEARCH_BATCH = 64  # messages whose bodies a SEARCH BODY/TEXT holds at once
SEARCH_SLICE = 0.02  # seconds a SEARCH evaluates before letting other calls run
FETCH_BODIES_CONCURRENCY = 8  # blob reads in flight for one FetchBodies call
SMALL_MAILBOX = 128  # uidnext at most this: whole-mailbox metadata reads name their UID range
WHOLE_BLOB_READ = 256 * 1024  # up to this size a message is read once, all its sections sliced from it

Wanted = Sequence[tuple[Section, tuple[int, int] | None]]  # (section, partial (offset, length))


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), BODY_CHUNK):
        yield data[i : i + BODY_CHUNK]


def _within(records: list[MessageRecord], max_bytes: int) -> list[MessageRecord]:
    """The first messages whose sizes add up to at most `max_bytes` (the first always); all without it."""
    if not max_bytes or not records:
        return records
    total, cut = records[0].size, 1
    while cut < len(records) and total + records[cut].size <= max_bytes:
        total += records[cut].size
        cut += 1
    return records[:cut]


class _ReadAhead:
    """Whole-blob reads of small messages, started ahead of the consumer (bounded by a window) while
    earlier ones are sent, unless the store reads locally."""

    def __init__(self, blobs: BlobStore, records: list[MessageRecord], headers_only: bool) -> None:
        self.blobs = blobs
        self.records = records
        self.headers_only = headers_only
        self.local = blobs.local_reads
        self.window = 2 * FETCH_BODIES_CONCURRENCY
        self.limit = asyncio.Semaphore(FETCH_BODIES_CONCURRENCY)
        self.reads: dict[int, asyncio.Task[bytes]] = {}

    async def _whole(self, record: MessageRecord) -> bytes:
        async with self.limit:
            return await self.blobs.get(record.blob_key)

    async def raw(self, i: int, record: MessageRecord, structure: BodyPart) -> bytes | None:
        """The bytes all sections of message `i` are cut from, or None: read each by range."""
        if self.headers_only:
            # Only top-level header sections: the header block kept in the metadata, when it is whole.
            whole = structure.header_offset == 0 and len(record.header) == structure.body_offset
            return record.header if whole else None
        if self.local and record.size <= WHOLE_BLOB_READ:
            return await self.blobs.get(record.blob_key)  # microseconds: no task per read
        for ahead in self.records[i : i + self.window]:
            if ahead.size <= WHOLE_BLOB_READ and ahead.uid not in self.reads:
                self.reads[ahead.uid] = asyncio.ensure_future(self._whole(ahead))
        read = self.reads.pop(record.uid, None)
        return await read if read is not None else None

    def cancel(self) -> None:
        """The caller stopped early (client gone) or a read failed: the reads still running go."""
        for task in self.reads.values():
            if task.done() and not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it as lost
            task.cancel()


class Reading:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores

    async def fetch_metadata(
        self, account: str, mailbox_name: str, uids: UidRanges | None, changed_since: int = 0
    ) -> tuple[MailboxRecord, list[MessageRecord]]:
        """The mailbox (its uidvalidity) and the records: a mailbox deleted and created again has a
        new id, so the records always belong to the uidvalidity returned with them."""
        mailbox = await self.stores.read_mailbox(account, mailbox_name)
        if uids is None and mailbox.uidnext <= SMALL_MAILBOX:
            # Every UID is below uidnext: naming the range lets the store read a small mailbox
            # on the event loop instead of in a thread (a POP3 login, an IMAP SELECT).
            uids = [(1, max(1, mailbox.uidnext - 1))]
        return mailbox, await self.stores.metadata.fetch(mailbox.id, uids, changed_since)

    async def fetch_body(
        self, account: str, mailbox_name: str, uid: int, section: Section, partial: tuple[int, int] | None
    ) -> BodySlice:
        """A section of one message, streamed from the blob store by range reads."""
        mailbox = await self.stores.read_mailbox(account, mailbox_name)
        records = await self.stores.metadata.fetch(mailbox.id, [(uid, uid)])
        if not records:
            raise MailboxNotFound(f"no message with UID {uid}") from None
        record = records[0]
        return await self._section_slice(record, BodyPart.FromString(record.structure), section, partial, None)

    async def fetch_bodies(
        self, account: str, mailbox_name: str, uids: UidRanges, wanted: Wanted, max_bytes: int = 0
    ) -> AsyncIterator[tuple[MessageRecord, int, BodySlice]]:
        """(message, section index, slice) of each wanted (section, partial) of each existing message of
        `uids`, in UID order: one metadata read for the set, then blob reads, FETCH_BODIES_CONCURRENCY
        at a time and ahead of the consumer. A small message is read whole once for all its sections.
        With `max_bytes`, only the messages (the first always) whose sizes add up to at most that."""
        mailbox = await self.stores.read_mailbox(account, mailbox_name)
        # Only top-level header sections (a client's message list): served from the header block
        # kept in the metadata for SEARCH, no blob read at all.
        headers_only = all(not s.part and s.text in _HEADER_TEXTS for s, _ in wanted)
        records = await self.stores.metadata.fetch(mailbox.id, uids, with_header=headers_only) if wanted else []
        records = _within(records, max_bytes)
        ahead = _ReadAhead(self.stores.blobs, records, headers_only)
        try:
            for i, record in enumerate(records):
                for index, body in enumerate(await self._slices(mailbox, i, record, wanted, ahead)):
                    yield record, index, body
        finally:
            ahead.cancel()

    async def _slices(
        self, mailbox: MailboxRecord, i: int, record: MessageRecord, wanted: Wanted, ahead: _ReadAhead
    ) -> list[BodySlice]:
        structure = BodyPart.FromString(record.structure)
        try:
            raw = await ahead.raw(i, record, structure)
            return [await self._section_slice(record, structure, section, partial, raw) for section, partial in wanted]
        except BlobNotFound:
            # A broken message (a row without its body) must not fail the whole mailbox:
            # it is reported missing and the others still come.
            log_missing(mailbox, record)
            return [BodySlice(0, _chunks(b""), missing=True) for _ in wanted]

    async def _section_slice(
        self,
        record: MessageRecord,
        structure: BodyPart,
        section: Section,
        partial: tuple[int, int] | None,
        raw: bytes | None,
    ) -> BodySlice:
        """The section rules (RFC 3501 §6.4.5) for one message; from `raw` when it holds the bytes the section
        needs (the whole blob, or the header block for a header section), else by a range read
        (streamed when over one chunk)."""
        try:
            plan = sections.plan_section(structure, section)
        except sections.SectionNotFound:
            return BodySlice(0, _chunks(b""))
        blobs = self.stores.blobs

        async def read(start: int, end: int) -> bytes:
            return raw[start:end] if raw is not None else await blobs.get(record.blob_key, start, end)

        if plan.header_filter is not None:
            fields, exclude = plan.header_filter
            data = sections.apply_header_filter(await read(plan.start, plan.end), fields, exclude)
            if partial is not None:
                data = data[partial[0] : partial[0] + partial[1]]
            return BodySlice(len(data), _chunks(data))
        start, end = plan.start, plan.end
        if partial is not None:
            start = min(end, start + partial[0])
            end = min(end, start + partial[1])
        if end <= start:
            return BodySlice(0, _chunks(b""))
        # A top-level section starts and ends at line ends, so it keeps the message's CRLF property.
        crlf = structure.crlf and partial is None and not section.part
        if raw is not None or end - start <= BODY_CHUNK:
            data = await read(start, end)
            return BodySlice(len(data), _chunks(data), crlf)
        return BodySlice(end - start, blobs.stream(record.blob_key, start, end, BODY_CHUNK), crlf)

    async def read_body(self, key: str) -> bytes:
        """A whole body by its key (a queued message's, for the outbound worker)."""
        return await self.stores.blobs.get(key)

    async def search(self, account: str, mailbox_name: str, key: SearchKey) -> tuple[list[int], int]:
        """The UIDs matching `key`, and the highest MODSEQ among them (RFC 7162 §3.1.5)."""
        hits = await self.search_records(account, mailbox_name, key)
        return [r.uid for r in hits], max((r.modseq for r in hits), default=0)

    async def search_records(self, account: str, mailbox_name: str, key: SearchKey) -> list[MessageRecord]:
        """The records matching `key` in UID order, with their header blocks (what IMAP SORT and
        THREAD order by: RFC 5256 keys come from the envelope, dates, size and References)."""
        mailbox = await self.stores.read_mailbox(account, mailbox_name)
        records = await self.stores.metadata.fetch(mailbox.id, None, with_header=True)
        max_uid = records[-1].uid if records else 0
        with_body = search.needs_body(key)
        limit = asyncio.Semaphore(SEARCH_BODY_CONCURRENCY)
        bodies: dict[int, bytes] = {}

        async def load(r: MessageRecord) -> None:
            async with limit:
                try:
                    bodies[r.uid] = await self.stores.blobs.get(r.blob_key)
                except BlobNotFound:  # a broken message matches no body text; the others are searched
                    log_missing(mailbox, r)
                    bodies[r.uid] = b""

        # Bodies are read a batch at a time (memory: a batch, not the mailbox), and the loop is
        # given back every SEARCH_SLICE seconds: a SEARCH of a big mailbox, or with many keys, is
        # linear in messages x keys but never holds every other call of every account meanwhile.
        hits: list[MessageRecord] = []
        slice_end = time.monotonic() + SEARCH_SLICE
        for start in range(0, len(records), SEARCH_BATCH):
            batch = records[start : start + SEARCH_BATCH]
            bodies.clear()
            if with_body:
                await asyncio.gather(*(load(r) for r in batch))
            for seq, r in enumerate(batch, start + 1):
                if time.monotonic() > slice_end:
                    await asyncio.sleep(0)
                    slice_end = time.monotonic() + SEARCH_SLICE
                try:
                    if search.matches(key, r, seq, max_uid, bodies.get(r.uid), max_seq=len(records)):
                        hits.append(r)
                except ValueError as e:
                    raise InvalidRequest(f"bad search key: {e}") from None
        return hits
