"""One change-log read and one \\Recent claim per mailbox for the sessions of this process that need
the same one at once. A delivery wakes every IDLE session on the mailbox together; each asking the
mailstore the same GetChanges and ClaimRecent made one event cost two round trips per session, and
the last session told waited for all of them (the tail of IDLE push, issue 19).

Sharing never serves a caller older news than its own read would: a read is joined only when it
began after the caller's latest hint (`tick`), and a hint that arrives while a read is under way
starts another for whoever got it. Both are per process, as the notifier is.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from .mailstore import ChangeLog, ImapMailstore

MAX_CLAIMED = 10_000  # mailboxes whose claimed \Recent floor is remembered (forgetting costs a round trip)
_ticks = itertools.count(1)


def tick() -> int:
    """A point in this process's order of hints and reads (strictly increasing)."""
    return next(_ticks)


@dataclass
class _Read:
    started: int  # the tick when it was sent: it sees every change whose hint came before
    task: asyncio.Future[ChangeLog]


class SharedReads:
    def __init__(self) -> None:
        self._reads: dict[tuple[str, str, int], _Read] = {}
        # (account, mailbox, UIDVALIDITY) -> every UID below is claimed by a claim this process sent
        # or by an earlier one (the floor only rises, RFC 3501 §2.3.2)
        self._claimed: dict[tuple[str, str, int], int] = {}

    async def changes(self, mailstore: ImapMailstore, mailbox: str, since: int, hinted: int) -> ChangeLog:
        """The change log of `mailbox` after MODSEQ `since`, from a read sent after tick `hinted`
        (the caller's latest hint): one under way is shared, else a new one is sent."""
        key = (mailstore.account, mailbox, since)
        read = self._reads.get(key)
        if read is None or read.started <= hinted:
            read = _Read(tick(), asyncio.ensure_future(mailstore.changes(mailbox, since)))
            self._reads[key] = read
            read.task.add_done_callback(lambda task: self._read_done(key, task))
        # shielded: a session that goes away (its task cancelled) does not cancel the others' read
        return await asyncio.shield(read.task)

    def _read_done(self, key: tuple[str, str, int], task: asyncio.Future[ChangeLog]) -> None:
        read = self._reads.get(key)
        if read is not None and read.task is task:
            del self._reads[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it already, none is left to log it

    async def claim_recent(
        self, mailstore: ImapMailstore, mailbox: str, uidvalidity: int, new: Iterable[int]
    ) -> set[int]:
        """Which of the `new` UIDs get \\Recent in this session (RFC 3501 §2.3.2: one session gets
        each). A claim moves the mailbox's floor to its UIDNEXT, above every UID that existed when
        it was sent: UIDs a claim of this process already covers go to that claim's session, and
        this one learns so without a round trip or a wait."""
        key = (mailstore.account, mailbox, uidvalidity)
        new = list(new)
        if not new or max(new) < self._claimed.get(key, 0):
            return set()
        self._cover(key, max(new) + 1)  # before the call: sessions asking meanwhile leave them to it
        first, uidnext = await mailstore.claim_recent(mailbox)
        self._cover(key, uidnext)
        return {uid for uid in new if first <= uid < uidnext}

    def _cover(self, key: tuple[str, str, int], below: int) -> None:
        if len(self._claimed) >= MAX_CLAIMED and key not in self._claimed:
            self._claimed.clear()
        self._claimed[key] = max(self._claimed.get(key, 0), below)
