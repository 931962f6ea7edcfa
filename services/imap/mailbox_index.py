"""The mailbox index of one IMAP process (ADR 0041): each mailbox's UIDs, flags and MODSEQs as a
SELECT last read them, shared by every session of the process, so the next SELECT of that mailbox
asks the mailstore only for what changed since (one small GetChanges call) instead of listing it.

Kept current from the change log by MODSEQ, never from the change events alone (they carry no
flags and may be lost): every use catches up from the log, so a lost event cannot make it stale.
A gap is repaired by listing the mailbox again: another mailbox under the name (MAILBOXID or
UIDVALIDITY differ), a log pruned beyond the index's MODSEQ (expunges may be missing), a mailbox
whose HIGHESTMODSEQ went back, or a message count that disagrees with the status. Bounded: the
least recently used mailboxes go first once the process holds more messages than the setting.
No I/O here but through the `IndexSource` the caller passes (the session's mailstore adapter).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from mailstack.v1 import mailstore_pb2 as pb

from .mailbox_view import EXPUNGE, Change

Message = tuple[int, frozenset[str], int]  # uid, flags, modseq


class ChangesReply(Protocol):
    @property
    def uidvalidity(self) -> int: ...
    @property
    def pruned_modseq(self) -> int: ...
    @property
    def changes(self) -> list[Change]: ...


class IndexSource(Protocol):
    """The mailstore as the index reads it (services/imap/mailstore.py implements it)."""

    async def whole_mailbox(self, name: str) -> tuple[pb.MailboxStatus, list[Message]]:
        """The status, then every message (UID order not required)."""

    async def status_and_changes(self, name: str, since_modseq: int) -> tuple[pb.MailboxStatus, ChangesReply]:
        """The status, read before the changes after `since_modseq`."""


class IndexedMailbox:
    """One mailbox as of `modseq`: every change up to there is in (later ones may be too)."""

    def __init__(self, status: pb.MailboxStatus, messages: Iterable[Message]) -> None:
        self.mailbox_id = status.mailbox_id
        self.uidvalidity = status.uidvalidity
        self.modseq = status.highestmodseq
        self.flags: dict[int, frozenset[str]] = {}
        self.modseqs: dict[int, int] = {}
        # one object per distinct flag set: most messages share a few, and a set costs ~200 bytes
        self._flag_sets: dict[frozenset[str], frozenset[str]] = {}
        for uid, flags, modseq in messages:
            self.flags[uid] = self._flag_sets.setdefault(flags, flags)
            self.modseqs[uid] = modseq
        self.uids = sorted(self.flags)
        self.lock = asyncio.Lock()  # one catch-up at a time: each starts where the last ended

    def __len__(self) -> int:
        return len(self.uids)

    def messages(self) -> list[Message]:
        flags, modseqs = self.flags, self.modseqs
        return [(uid, flags[uid], modseqs[uid]) for uid in self.uids]

    def same_mailbox(self, status: pb.MailboxStatus, reply: ChangesReply) -> bool:
        """Whether the reply continues this index: the same mailbox, its log whole since our MODSEQ
        (RFC 7162 §3.2.5.2 needs the expunges), and not gone back in time (a restored database)."""
        return (
            status.mailbox_id == self.mailbox_id
            and status.uidvalidity == self.uidvalidity == reply.uidvalidity
            and reply.pruned_modseq <= self.modseq
            and status.highestmodseq >= self.modseq
        )

    def apply(self, changes: Iterable[Change], highestmodseq: int) -> None:
        """The log's changes since our MODSEQ; each names a message's state now (its current flags,
        or that it is gone), so applying one again, or in any order, gives the same result."""
        for change in changes:
            if change.kind == EXPUNGE:
                if self.flags.pop(change.uid, None) is not None:
                    del self.modseqs[change.uid]
                    del self.uids[bisect.bisect_left(self.uids, change.uid)]
                continue
            if change.uid not in self.flags:
                bisect.insort(self.uids, change.uid)
            flags = frozenset(change.flags)
            self.flags[change.uid] = self._flag_sets.setdefault(flags, flags)
            self.modseqs[change.uid] = change.modseq
        self.modseq = max(self.modseq, highestmodseq)


class MailboxIndex:
    """The index of every mailbox this process selected lately, keyed by (account, name); at most
    `limit` messages in all (each mailbox counts one more, so empty ones are bounded too)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[tuple[str, str], IndexedMailbox] = OrderedDict()
        self._held = 0  # sum of len(entry) + 1

    @property
    def held(self) -> int:
        return self._held

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._held -= len(entry) + 1

    def _keep(self, key: tuple[str, str], entry: IndexedMailbox) -> None:
        """Hold `entry` as the most recently used, evicting the least recently used beyond the limit;
        a mailbox larger than the whole limit is not held."""
        self.drop(key)
        if len(entry) + 1 > self.limit:
            return
        self._entries[key] = entry
        self._held += len(entry) + 1
        while self._held > self.limit:
            self.drop(next(iter(self._entries)))

    async def read(self, source: IndexSource, account: str, name: str) -> tuple[pb.MailboxStatus, list[Message]]:
        """The mailbox's status and messages, as fresh as a listing made now: from the index and
        the changes since it when it holds the mailbox, else (or when the index has a gap) listed."""
        key = (account, "INBOX" if name.upper() == "INBOX" else name)
        entry = self._entries.get(key)
        if entry is None or not self.limit:
            return await self._reload(source, key, name)
        async with entry.lock:
            try:
                status, reply = await source.status_and_changes(name, entry.modseq)
            except BaseException:  # deleted, renamed, or the call failed: list it again next time
                if self._entries.get(key) is entry:
                    self.drop(key)
                raise
            if not entry.same_mailbox(status, reply):
                return await self._reload(source, key, name)
            before = len(entry)
            entry.apply(reply.changes, status.highestmodseq)
            # Read before the changes: when none is newer than the status, both tell the same state.
            quiet = all(c.modseq <= status.highestmodseq for c in reply.changes)
            if quiet and len(entry) != status.messages:
                return await self._reload(source, key, name)  # the log missed something: list it
            if self._entries.get(key) is entry:  # still held (not evicted or replaced meanwhile)
                self._held += len(entry) - before
                self._keep(key, entry)
            return status, entry.messages()

    async def _reload(
        self, source: IndexSource, key: tuple[str, str], name: str
    ) -> tuple[pb.MailboxStatus, list[Message]]:
        self.drop(key)
        status, messages = await source.whole_mailbox(name)
        if not self.limit:
            return status, messages
        entry = IndexedMailbox(status, messages)
        self._keep(key, entry)
        return status, entry.messages()
